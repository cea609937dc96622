//! KEDA's Kafka-scaler arithmetic (`kafka_scaler.go`; `shared/reference/keda-kafka.md` §3), one
//! implementation for the local engine's scaler and for `zerofn scaler`: each partition's lag
//! (with the rules for a partition the group never committed), the partition cap with its
//! integer division, and activation.

/// What a consumer without a committed offset starts from (`offsetResetPolicy`; Dapr's
/// `initialOffset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ResetPolicy {
    /// The oldest record: the whole log is lag.
    #[default]
    Earliest,
    /// Records after the consumer joins: one record of lag, as KEDA counts it.
    Latest,
}

/// How partitions without a committed offset count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    pub(crate) policy: ResetPolicy,
    /// `scaleToZeroOnInvalidOffset`: such partitions count no lag at all.
    pub(crate) scale_to_zero_on_invalid_offset: bool,
}

/// One partition's lag: `end − committed`; without a committed offset, `end` itself
/// (`earliest`: the raw log-end offset, not end − log start, exactly as KEDA) or `1`
/// (`latest`), or `0` under `scale_to_zero_on_invalid_offset`. Never negative.
pub(crate) fn partition_lag(end: i64, committed: Option<i64>, rules: Rules) -> u64 {
    let lag = match committed {
        Some(c) if c >= 0 => end - c,
        _ if rules.scale_to_zero_on_invalid_offset => 0,
        _ => match rules.policy {
            ResetPolicy::Earliest => end,
            ResetPolicy::Latest => 1,
        },
    };
    u64::try_from(lag).unwrap_or(0)
}

/// The metric KEDA reports for `total` lag over `partitions` (`None`: `allowIdleConsumers`, no
/// cap): capped at `partitions × threshold` once `total / threshold` (integer division) exceeds
/// the partitions, so the cap triggers only at `(partitions + 1) × threshold`.
pub(crate) fn capped(total: u64, partitions: Option<u32>, threshold: u64) -> u64 {
    match partitions {
        Some(upper) if total / threshold.max(1) > u64::from(upper) => u64::from(upper) * threshold,
        _ => total,
    }
}

/// Whether a trigger is active: lag strictly above the activation threshold.
pub(crate) fn is_active(total: u64, activation_threshold: u64) -> bool {
    total > activation_threshold
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (total lag, partitions, threshold, KEDA's metric): the cases the engine's scaler and
    /// `zerofn scaler` are both held to.
    pub(crate) const CAP_CASES: &[(u64, Option<u32>, u64, u64)] = &[
        (0, Some(3), 10, 0),
        (5, Some(3), 10, 5),
        (30, Some(3), 10, 30),
        // 35 / 10 = 3, not > 3: uncapped (KEDA's off-by-one).
        (35, Some(3), 10, 35),
        (39, Some(3), 10, 39),
        (40, Some(3), 10, 30),
        (499, Some(4), 100, 499),
        (500, Some(4), 100, 400),
        (2000, Some(4), 100, 400),
        (2000, None, 100, 2000),
        (7, Some(1), 1, 1),
    ];

    #[test]
    fn the_cap_is_keda_s_integer_division() {
        for &(total, partitions, threshold, metric) in CAP_CASES {
            assert_eq!(
                capped(total, partitions, threshold),
                metric,
                "{total} over {partitions:?} at {threshold}"
            );
        }
    }

    #[test]
    fn a_partition_without_a_commit_counts_as_keda_counts_it() {
        let earliest = Rules::default();
        let latest = Rules {
            policy: ResetPolicy::Latest,
            scale_to_zero_on_invalid_offset: false,
        };
        let zero = Rules {
            policy: ResetPolicy::Earliest,
            scale_to_zero_on_invalid_offset: true,
        };
        assert_eq!(partition_lag(34, Some(27), earliest), 7);
        assert_eq!(partition_lag(34, None, earliest), 34);
        assert_eq!(
            partition_lag(34, Some(-1), earliest),
            34,
            "-1 is Kafka's no offset"
        );
        assert_eq!(partition_lag(34, None, latest), 1);
        assert_eq!(partition_lag(0, None, latest), 1);
        assert_eq!(partition_lag(34, None, zero), 0);
        assert_eq!(partition_lag(34, Some(40), earliest), 0, "never negative");
    }

    #[test]
    fn activation_is_strictly_above_the_threshold() {
        assert!(!is_active(0, 0));
        assert!(is_active(1, 0));
        assert!(!is_active(5, 5));
        assert!(is_active(6, 5));
    }
}

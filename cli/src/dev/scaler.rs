//! KEDA's arithmetic for the Kafka scaler plus the HPA's, as one pure function (see
//! `shared/reference/keda-kafka.md`): activation on lag above the activation threshold, the
//! partition cap with its integer division, `ceil(lag / threshold)` with the HPA's 10 %
//! tolerance, clamping to `min`/`max`, scale-down stabilisation, and scale to zero only after
//! the cooldown with no activity. HTTP demand (requests in flight and queued) scales like
//! Knative's concurrency target and takes part as a second metric: the larger wins.

use std::time::{Duration, Instant};

/// What one evaluation sees.
#[derive(Clone, Debug)]
pub(crate) struct Inputs {
    /// Lag summed over every partition of the subscribed topics.
    pub(crate) total_lag: u64,
    /// Partitions summed over the subscribed topics (the cap; `None` = no cap).
    pub(crate) partitions: Option<u32>,
    /// HTTP requests in flight or waiting, and the target per replica.
    pub(crate) http: Option<(u64, u32)>,
    /// Replicas now (running or starting).
    pub(crate) current: u32,
}

/// The function's scaling parameters (`[scaling]` in `function.toml`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) lag_threshold: u64,
    pub(crate) activation_lag_threshold: u64,
    pub(crate) cooldown: Duration,
}

/// The scaler's memory between evaluations.
#[derive(Debug, Default)]
pub(crate) struct Scaler {
    last_active: Option<Instant>,
    /// Recent recommendations, for scale-down stabilisation.
    recent: Vec<(Instant, u32)>,
}

/// HPA tolerance: no change while the ratio is within 10 % of 1.
const TOLERANCE: f64 = 0.1;

/// KEDA's capped metric and the replica count it asks for (HPA `AverageValue` target).
fn lag_recommendation(total: u64, partitions: Option<u32>, threshold: u64, current: u32) -> u32 {
    hpa(
        crate::lag::capped(total, partitions, threshold),
        threshold,
        current,
    )
}

fn hpa(metric: u64, target: u64, current: u32) -> u32 {
    let want = metric.div_ceil(target.max(1));
    if current > 0 {
        let ratio = metric as f64 / (target as f64 * f64::from(current));
        if (1.0 - ratio).abs() <= TOLERANCE {
            return current;
        }
    }
    u32::try_from(want).unwrap_or(u32::MAX)
}

impl Scaler {
    /// The replica count wanted at `now`.
    pub(crate) fn desired(&mut self, p: Params, i: &Inputs, now: Instant) -> u32 {
        let demand = i.http.map_or(0, |(d, _)| d);
        let active = crate::lag::is_active(i.total_lag, p.activation_lag_threshold)
            || demand > 0
            || p.min > 0;
        if active {
            self.last_active = Some(now);
        }
        let idle_long_enough = self
            .last_active
            .is_none_or(|t| now.duration_since(t) >= p.cooldown);
        if !active && p.min == 0 {
            self.recent.clear();
            return if i.current == 0 || idle_long_enough {
                0
            } else {
                i.current
            };
        }
        let by_lag = lag_recommendation(i.total_lag, i.partitions, p.lag_threshold, i.current);
        let by_http = i
            .http
            .map_or(0, |(d, target)| hpa(d, u64::from(target), i.current));
        let recommended = by_lag.max(by_http).clamp(p.min.max(1), p.max);
        // Scale-down stabilisation: the highest recommendation over the window (the HPA's
        // 300 s; here the function's cooldown). Scale-up is immediate.
        self.recent
            .retain(|(t, _)| now.duration_since(*t) < p.cooldown);
        self.recent.push((now, recommended));
        if recommended >= i.current {
            recommended
        } else {
            self.recent
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommended)
                .min(i.current)
        }
    }
}

/// Why a function wants `desired` replicas, for `zerofn status`: the inputs that ask for
/// replicas now (`lag` on its topics, a `job due`, `http` demand, `unsent` outputs at zero,
/// its `min`), joined with `+`; `cooldown` when none does but replicas remain; `idle` at zero.
pub(crate) fn reason(
    desired: u32,
    min: u32,
    events_lag: u64,
    jobs_due: u64,
    http_demand: u64,
    unsent: bool,
) -> String {
    if desired == 0 {
        return "idle".into();
    }
    let why: Vec<&str> = [
        (events_lag > 0, "lag"),
        (jobs_due > 0, "job due"),
        (http_demand > 0, "http"),
        (unsent, "unsent"),
        (min > 0, "min"),
    ]
    .into_iter()
    .filter_map(|(on, what)| on.then_some(what))
    .collect();
    if why.is_empty() {
        "cooldown".into()
    } else {
        why.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_scales_on_the_metric_keda_reports() {
        for &(total, partitions, threshold, metric) in crate::lag::tests::CAP_CASES {
            assert_eq!(
                u64::from(lag_recommendation(total, partitions, threshold, 0)),
                metric.div_ceil(threshold),
                "{total} over {partitions:?} at {threshold}"
            );
        }
    }

    const P: Params = Params {
        min: 0,
        max: 4,
        lag_threshold: 100,
        activation_lag_threshold: 0,
        cooldown: Duration::from_secs(60),
    };

    fn lag(total: u64, partitions: u32, current: u32) -> Inputs {
        Inputs {
            total_lag: total,
            partitions: Some(partitions),
            http: None,
            current,
        }
    }

    #[test]
    fn activation_is_strictly_above_the_threshold() {
        let now = Instant::now();
        let p = Params {
            activation_lag_threshold: 5,
            ..P
        };
        assert_eq!(Scaler::default().desired(p, &lag(5, 4, 0), now), 0);
        assert_eq!(Scaler::default().desired(p, &lag(6, 4, 0), now), 1);
        assert_eq!(Scaler::default().desired(P, &lag(1, 4, 0), now), 1);
    }

    #[test]
    fn ceil_of_lag_over_threshold_capped_by_partitions_and_max() {
        let now = Instant::now();
        let big = Params { max: 100, ..P };
        assert_eq!(Scaler::default().desired(big, &lag(250, 12, 0), now), 3);
        // Lag 2000, 4 partitions: 2000/100 = 20 > 4, metric capped to 400 → 4 replicas.
        assert_eq!(Scaler::default().desired(big, &lag(2000, 4, 0), now), 4);
        // KEDA's off-by-one: 3 partitions, lag 350 → 350/100 = 3, not > 3 → 4 replicas.
        assert_eq!(Scaler::default().desired(big, &lag(350, 3, 0), now), 4);
        assert_eq!(
            Scaler::default().desired(P, &lag(100_000, 64, 0), now),
            4,
            "max"
        );
    }

    #[test]
    fn hpa_tolerance_keeps_the_count() {
        let now = Instant::now();
        let big = Params { max: 100, ..P };
        // 3 replicas, lag 320: ratio 1.07 → stay at 3 (ceil would say 4).
        assert_eq!(Scaler::default().desired(big, &lag(320, 12, 3), now), 3);
        assert_eq!(Scaler::default().desired(big, &lag(340, 12, 3), now), 4);
    }

    #[test]
    fn scale_down_waits_for_the_window_and_zero_for_the_cooldown() {
        let t0 = Instant::now();
        let mut s = Scaler::default();
        assert_eq!(s.desired(P, &lag(400, 4, 0), t0), 4);
        // Lag drops: the recent recommendation of 4 holds the count.
        assert_eq!(
            s.desired(P, &lag(90, 4, 4), t0 + Duration::from_secs(10)),
            4
        );
        assert_eq!(
            s.desired(P, &lag(90, 4, 4), t0 + Duration::from_secs(61)),
            1
        );
        // No lag: stay up until the cooldown since the last active evaluation has passed.
        assert_eq!(s.desired(P, &lag(0, 4, 1), t0 + Duration::from_secs(62)), 1);
        assert_eq!(
            s.desired(P, &lag(0, 4, 1), t0 + Duration::from_secs(120)),
            1
        );
        assert_eq!(
            s.desired(P, &lag(0, 4, 1), t0 + Duration::from_secs(122)),
            0
        );
    }

    #[test]
    fn min_replicas_never_go_to_zero() {
        let p = Params { min: 1, ..P };
        assert_eq!(
            Scaler::default().desired(p, &lag(0, 4, 0), Instant::now()),
            1
        );
    }

    #[test]
    fn http_demand_scales_by_concurrency_without_a_partition_cap() {
        let now = Instant::now();
        let big = Params { max: 50, ..P };
        let i = Inputs {
            total_lag: 0,
            partitions: None,
            http: Some((200, 10)),
            current: 0,
        };
        assert_eq!(Scaler::default().desired(big, &i, now), 20);
        let one = Inputs {
            http: Some((1, 10)),
            ..i
        };
        assert_eq!(Scaler::default().desired(big, &one, now), 1);
    }

    #[test]
    fn the_reason_names_what_asks_for_replicas() {
        assert_eq!(reason(0, 0, 0, 0, 0, false), "idle");
        assert_eq!(reason(1, 0, 0, 1, 0, false), "job due");
        assert_eq!(reason(2, 0, 150, 1, 0, false), "lag+job due");
        assert_eq!(reason(1, 0, 0, 0, 3, false), "http");
        assert_eq!(reason(1, 0, 0, 0, 0, true), "unsent");
        assert_eq!(reason(1, 1, 0, 0, 0, false), "min");
        assert_eq!(
            reason(1, 0, 0, 0, 0, false),
            "cooldown",
            "nothing asks: scaling down soon"
        );
    }
}

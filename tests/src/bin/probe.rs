//! The probe function as a real binary, for tests that need a process (signals, exit codes,
//! stdout logs). `PROBE_START_DELAY_MS` holds its start-up that long (a slow cold start).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    if let Some(ms) = std::env::var("PROBE_START_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    zerofn::run(
        zerofn_tests::probe(zerofn_tests::Calls::default()),
        zerofn_tests::MANIFEST,
    )
    .await
}

//! The probe function as a real binary, for tests that need a process (signals, exit codes,
//! stdout logs).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::run(
        zerofn_tests::probe(zerofn_tests::Calls::default()),
        zerofn_tests::MANIFEST,
    )
    .await
}

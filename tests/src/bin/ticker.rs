//! The ticker function as a real binary, for the engine's schedule tests.

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::run(zerofn_tests::ticker(), zerofn_tests::TICKER).await
}

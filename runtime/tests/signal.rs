//! `zerofn::shutdown_signal()` installs its handlers when called, not when first polled: a
//! SIGTERM that arrives between the call and the first poll (a server starting up) is delivered
//! to the future instead of killing the process. Its own test binary, since it signals itself.

use std::time::Duration;

#[tokio::test]
async fn a_sigterm_before_the_first_poll_is_delivered_not_fatal() {
    let stop = zerofn::shutdown_signal();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -TERM self: {sent}");
    // Without the handler installed by the call above, the default action has killed this
    // process by now and the test binary fails with "signal: 15".
    tokio::time::timeout(Duration::from_secs(30), stop)
        .await
        .expect("the SIGTERM sent before the first poll resolves the future");
}

//! `oauth_flow = "delegated"`: without a signed-in user the route is held with an error that says to run
//! `sluice login`; the device code flow (the user approving through exosim's sign-in page stand-in)
//! stores a refresh token with mode 0600; sending then uses the refresh token grant and writes the
//! rotated refresh token back, still 0600.

mod m365;

use std::os::unix::fs::PermissionsExt as _;

use m365::*;
use sluice::upstream::Disposition;

const PUBLIC_APP: &str = "3c9d1e2f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn login_with_a_device_code_then_send_with_rotating_refresh_tokens() {
    let apps = format!("[[apps]]\nclient_id = \"{PUBLIC_APP}\"\nname = \"sluice (delegated)\"\npublic_client = true\n");
    let mut world = start(
        &tenant("", &apps),
        |sim, _dir| {
            let smtp = sim.smtp_addr();
            format!(
                "kind = \"m365-oauth\"\nhost = \"{}\"\nport = {}\nmailbox = \"{MAILBOX}\"\nclient_id = \"{PUBLIC_APP}\"\n\
                 oauth_flow = \"delegated\"\nrefresh_token_file = \"m365.token\"\ntoken_url = \"{}\"\n",
                smtp.ip(),
                smtp.port(),
                sim.token_url()
            )
        },
        "",
    )
    .await;
    let token_file = world.dir.path().join("m365.token");

    // Nobody signed in yet: the mail waits, held, and the error says what to do.
    let reply =
        world.submit(MAILBOX, &["alice@contoso.com"], &message(MAILBOX, "alice@contoso.com", "delegated")).await;
    assert!(reply.starts_with("250"), "{reply}");
    world.wait_until("the route held", |w| w.scheduler.hold_status().is_some()).await;
    let hold = world.scheduler.hold_status().unwrap();
    assert!(hold.reason.contains("sluice login"), "{}", hold.reason);
    assert!(world.sim.messages().is_empty());

    // `sluice login`: the user opens the page and enters the code (exosim's sign-in stands for the page).
    let config = sluice::config::load(&world.dir.path().join("sluice.toml")).unwrap();
    let oauth = config.upstream.oauth.clone().unwrap();
    let http = sluice::oauth::http_client(
        &config.upstream.https_tls,
        config.upstream.connect_timeout,
        config.upstream.command_timeout,
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let login = tokio::spawn(async move {
        sluice::oauth::login(&http, &oauth, move |prompt| {
            assert_eq!(prompt.verification_uri, "https://microsoft.com/devicelogin");
            let _ = tx.send(prompt.user_code.clone());
        })
        .await
    });
    let user_code = rx.await.expect("a user code was shown");
    world.sim.device_login(&user_code, MAILBOX).unwrap();
    login.await.unwrap().expect("login succeeds");
    let first = std::fs::read_to_string(&token_file).unwrap();
    assert!(!first.trim().is_empty());
    assert_eq!(mode(&token_file), 0o600);

    // The admin released the hold: the mail goes out as the signed-in user, and the refresh token rotated.
    assert!(world.scheduler.release_hold());
    let event = world.next_events(1).await.remove(0);
    assert_eq!(event.disposition, Disposition::Delivered, "{event:?}");
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.identity, MAILBOX);
    let rotated = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(rotated, first, "the refresh token was not rotated");
    assert_eq!(mode(&token_file), 0o600);
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(world.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("m365.token.tmp")), "{names:?}");
    world.stop().await;
}

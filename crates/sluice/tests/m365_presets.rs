//! The preset kinds: `m365-direct-send` (the tenant's MX host, port 25, STARTTLS, no authentication) and
//! `m365-hve` (High Volume Email: port 587, STARTTLS, the HVE account's password), each delivering through
//! the simulator, with the warnings check-config prints.

mod m365;

use exosim::SubmitPath;
use m365::*;
use sluice::upstream::Disposition;

#[tokio::test]
async fn direct_send_reaches_a_tenant_recipient_anonymously() {
    // No connector: the MX host takes the mail as direct send.
    let tenant_toml = tenant("", "")
        .replace("[[inbound_connectors]]\nname = \"sluice relay by IP\"\nsender_ip_addresses = [\"127.0.0.1\"]\n", "");
    let mut world = start(
        &tenant_toml,
        |sim, _dir| {
            let mx = sim.mx_addr();
            format!("kind = \"m365-direct-send\"\nhost = \"{}\"\nport = {}\n", mx.ip(), mx.port())
        },
        "",
    )
    .await;
    let from = "printer@contoso.com";
    let reply = world.submit(from, &["alice@contoso.com"], &message(from, "alice@contoso.com", "direct send")).await;
    assert!(reply.starts_with("250"), "{reply}");
    let event = world.next_events(1).await.remove(0);
    assert_eq!(event.disposition, Disposition::Delivered, "{event:?}");
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.path, SubmitPath::DirectSend);
    assert!(stored.tls, "direct send went without STARTTLS");
    let config = sluice::config::load(&world.dir.path().join("sluice.toml")).unwrap();
    assert_eq!(config.upstream.tls, sluice::config::UpstreamTls::Starttls);
    assert!(config.warnings.iter().any(|w| w.contains("tenant's own recipients")), "{:?}", config.warnings);
    assert!(config.warnings.iter().any(|w| w.contains("SPF") && w.contains("public IP")), "{:?}", config.warnings);
    world.stop().await;
}

#[tokio::test]
async fn hve_submits_with_the_account_password_over_starttls() {
    let mut world = start(
        &tenant("", ""),
        |sim, dir| {
            std::fs::write(dir.join("hve-password"), BASIC_PASSWORD).unwrap();
            let smtp = sim.smtp_addr();
            format!(
                "kind = \"m365-hve\"\nhost = \"{}\"\nport = {}\nmailbox = \"{BASIC_MAILBOX}\"\npassword_file = \"hve-password\"\n",
                smtp.ip(),
                smtp.port()
            )
        },
        "",
    )
    .await;
    let reply =
        world.submit(BASIC_MAILBOX, &["alice@contoso.com"], &message(BASIC_MAILBOX, "alice@contoso.com", "hve")).await;
    assert!(reply.starts_with("250"), "{reply}");
    let event = world.next_events(1).await.remove(0);
    assert_eq!(event.disposition, Disposition::Delivered, "{event:?}");
    let stored = world.wait_messages(1).await.remove(0);
    assert_eq!(stored.path, SubmitPath::SmtpAuth);
    assert_eq!(stored.identity, BASIC_MAILBOX);
    assert!(stored.tls);
    let config = sluice::config::load(&world.dir.path().join("sluice.toml")).unwrap();
    assert!(
        config.warnings.iter().any(|w| w.contains("m365-hve") && w.contains("inside the tenant")),
        "{:?}",
        config.warnings
    );
    world.stop().await;
}

#[test]
fn presets_fill_in_microsofts_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "x").unwrap();
    let parse = |upstream: &str| {
        sluice::config::parse(
            &format!("spool_dir = \"spool\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n[upstream]\n{upstream}"),
            dir.path(),
        )
        .unwrap()
        .upstream
    };
    let hve = parse("kind = \"m365-hve\"\nmailbox = \"hve@contoso.com\"\npassword_file = \"pw\"\n");
    assert_eq!((hve.host.as_str(), hve.port), ("smtp-hve.office365.com", 587));
    assert_eq!(hve.tls, sluice::config::UpstreamTls::Starttls);
    let direct = parse("kind = \"m365-direct-send\"\nhost = \"contoso-com.mail.protection.outlook.com\"\n");
    assert_eq!(direct.port, 25);
    assert!(direct.credentials.is_none());
}

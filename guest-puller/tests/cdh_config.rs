//! The repository's own init-data (`deploy/initdata.toml`) carries a `cdh.toml`
//! that cloak-cdh accepts and that points at the KBS.

use guest_puller::cdh::config::CdhToml;

#[test]
fn deploy_initdata_cdh_toml_is_accepted() {
    let root = test_support::workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/initdata.toml")).expect("deploy/initdata.toml");
    let initdata: toml::Table = text.parse().expect("initdata is TOML");
    let cdh = initdata
        .get("data")
        .and_then(|d| d.get("cdh.toml"))
        .and_then(|v| v.as_str())
        .expect("initdata has data.\"cdh.toml\"");
    let cfg = CdhToml::parse(cdh, "initdata cdh.toml").expect("cloak-cdh accepts the shipped cdh.toml");
    assert!(cfg.kbs_url.as_deref().is_some_and(|u| u.starts_with("http")), "{cfg:?}");
    assert_eq!(cfg.socket.as_deref(), Some("unix:///run/confidential-containers/cdh.sock"));
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::*;
use policies::PolicyHash;

fn k(person: &str) -> String {
    xonly_of(person).to_string()
}

/// The example policy written differently: other key order, table order, member order, inline
/// tables, no comments, `require` in the other form, allowlist address in upper case.
fn reordered() -> String {
    format!(
        r#"
name="strategic-reserve"
loosening_delay_secs=259200
version=1
proof_quorum="officers"
approvals={{max_age_blocks=288,max_age_secs=172800}}
fees = {{ fee_rate_band_percent = 25, max_fee_rate_sat_vb = 500, max_fee_sat = 2000000 }}

[[velocity]]
max_sat = 100000000000
window_secs = 2592000
[[velocity]]
max_sat = 20000000000
window_secs = 86400
[[velocity]]
window_secs = 604800
max_sat = 50000000000

[[allowlist]]
address = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
label = "treasury operating account"
[[allowlist]]
address = "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4"
label = "cold storage A"
[[allowlist]]
label = "cold storage B"
address = "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3"

[[groups]]
members = [{{ pubkey = "{grace}", person = "grace" }}, {{ person = "frank", pubkey = "{frank}" }}]
k = 1
name = "cfo"

[[groups]]
name = "officers"
members = [
  {{ person = "erin", pubkey = "{erin}" }}, {{ person = "dave", pubkey = "{dave}" }},
  {{ person = "carol", pubkey = "{carol}" }}, {{ person = "bob", pubkey = "{bob}" }},
  {{ person = "alice", pubkey = "{alice}" }},
]
k = 3

[[groups]]
name = "duty-officers"
k = 2
members = [{{ person = "carol", pubkey = "{carol}" }}, {{ person = "alice", pubkey = "{alice}" }}, {{ person = "bob", pubkey = "{bob}" }}]

[[tiers]]
up_to_sat = 100000000
require = [{{ k = 1, group = "duty-officers" }}]
name = "small"
delay_secs = 0
allowlist_only = false

[[tiers]]
name = "medium"
any_of = [[{{ group = "duty-officers", k = 2 }}]]
up_to_sat = 5000000000

[[tiers]]
allowlist_only = true
delay_secs = 86400
require = ["cfo", {{ group = "officers", k = 3 }}]
name = "large"

[admins]
members = [{{ person = "judy", pubkey = "{judy}" }}, {{ person = "ivan", pubkey = "{ivan}" }}, {{ person = "heidi", pubkey = "{heidi}" }}]
k = 2
"#,
        alice = k("alice"),
        bob = k("bob"),
        carol = k("carol"),
        dave = k("dave"),
        erin = k("erin"),
        frank = k("frank"),
        grace = k("grace"),
        heidi = k("heidi"),
        ivan = k("ivan"),
        judy = k("judy"),
    )
}

#[test]
fn hash_ignores_layout_order_and_equivalent_forms() {
    let a = example();
    let b = parse(&reordered());
    assert_eq!(a, b);
    assert_eq!(a.hash(), b.hash());
}

#[test]
fn hash_changes_when_any_rule_changes() {
    let mutations: &[(&str, &str)] = &[
        ("version = 1\n", "version = 2\n"),
        ("name = \"strategic-reserve\"", "name = \"reserve\""),
        ("proof_quorum = \"officers\"", "proof_quorum = \"cfo\""),
        ("loosening_delay_secs = 259200", "loosening_delay_secs = 259201"),
        ("[admins]\nk = 2", "[admins]\nk = 3"),
        ("name = \"officers\"\nk = 3", "name = \"officers\"\nk = 4"),
        ("name = \"cfo\"\nk = 1", "name = \"cfo\"\nk = 2"),
        (
            "    { person = \"grace\", pubkey = \"989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f\" },\n",
            "",
        ),
        (
            "989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f",
            "552c630b64b54bf50210c9e253d38bd4949c72e22873500f6285c2bede312a84",
        ),
        ("person = \"grace\"", "person = \"gracie\""),
        ("up_to_sat = 100_000_000", "up_to_sat = 100_000_001"),
        ("up_to_sat = 5_000_000_000", "up_to_sat = 5_000_000_001"),
        ("{ group = \"duty-officers\", k = 1 }", "{ group = \"duty-officers\", k = 2 }"),
        ("require = [\"duty-officers\"]", "require = [\"officers\"]"),
        ("require = [\"officers\", \"cfo\"]", "require = [\"officers\"]"),
        ("require = [\"officers\", \"cfo\"]", "any_of = [[\"officers\"], [\"cfo\"]]"),
        ("delay_secs = 86400", "delay_secs = 86401"),
        ("allowlist_only = true", "allowlist_only = false"),
        ("name = \"large\"", "name = \"huge\""),
        ("label = \"cold storage A\"", "label = \"cold storage Z\""),
        (
            "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
        ),
        ("window_secs = 604800", "window_secs = 604801"),
        ("max_sat = 50_000_000_000", "max_sat = 50_000_000_001"),
        ("max_fee_sat = 2_000_000", "max_fee_sat = 2_000_001"),
        ("max_fee_rate_sat_vb = 500", "max_fee_rate_sat_vb = 501"),
        ("fee_rate_band_percent = 25", "fee_rate_band_percent = 26"),
        ("fee_rate_band_percent = 25\n", ""),
        ("max_age_secs = 172800", "max_age_secs = 172801"),
        ("max_age_blocks = 288", "max_age_blocks = 289"),
        ("max_age_blocks = 288\n", ""),
    ];
    let base = example().hash();
    let mut seen = BTreeSet::from([base]);
    for (from, to) in mutations {
        let h = parse(&mutate(EXAMPLE, from, to)).hash();
        assert_ne!(h, base, "{from:?} -> {to:?} did not change the hash");
        assert!(
            seen.insert(h),
            "{from:?} -> {to:?} collides with another mutation"
        );
    }
}

#[test]
fn policy_hash_hex_display_parse_and_serde() {
    let h = example().hash();
    let s = h.to_string();
    assert_eq!(s.len(), 64);
    assert!(s
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(s.parse::<PolicyHash>().unwrap(), h);
    let json = serde_json::to_string(&h).unwrap();
    assert_eq!(json, format!("\"{s}\""));
    assert_eq!(serde_json::from_str::<PolicyHash>(&json).unwrap(), h);
    assert!("zz".parse::<PolicyHash>().is_err());
}

#[test]
fn hash_is_the_tagged_hash_of_the_canonical_bytes() {
    let p = example();
    let bytes = policies::canonical::canonical_bytes(&p);
    let expect = hashcore::TaggedHash::new("strategic-reserve/policy/v1").hash(&bytes);
    assert_eq!(p.hash().0, expect);
    assert_eq!(policies::canonical::policy_hash(&p), p.hash());
}

/// Pins the encodings: a change of either value is a change of the format (bump the tag).
#[test]
fn golden_vectors() {
    let p = example();
    let s = subject(&p, "req-1", bitcoin::Amount::from_sat(250_000_000));
    assert_eq!(
        p.hash().to_string(),
        "c49afa2f4ead965f8e961dcbfb90d8d24dfe2b4e69ac32bb2d87a5094c15bbaa"
    );
    assert_eq!(
        hex::encode(s.digest()),
        "c71ea207916dac395bf0f896604af93fa4a143eae4fb71657f7809bb2d5b3073"
    );
}

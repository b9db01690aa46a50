#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use bitcoin::Amount;
use common::*;
use policies::model::{GroupRequirement, PolicyError};
use policies::Policy;

#[test]
fn example_parses_and_has_the_documented_shape() {
    let p = example();
    assert_eq!(p.version(), 1);
    assert_eq!(p.name(), "strategic-reserve");
    let names: Vec<&str> = p.groups().iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["cfo", "duty-officers", "officers"]);
    assert_eq!(p.group("officers").unwrap().members.len(), 5);
    assert_eq!(p.group("officers").unwrap().k, 3);
    assert_eq!(p.admins().k, 2);
    assert_eq!(p.admins().members.len(), 3);
    assert_eq!(p.proof_quorum(), "officers");
    assert_eq!(p.loosening_delay_secs(), 72 * 3600);

    let tiers = p.tiers();
    assert_eq!(tiers.len(), 3);
    assert_eq!(
        tiers[0].requirement.alternatives,
        vec![vec![GroupRequirement {
            group: "duty-officers".into(),
            k: 1
        }]]
    );
    assert_eq!(
        tiers[1].requirement.alternatives,
        vec![vec![GroupRequirement {
            group: "duty-officers".into(),
            k: 2
        }]]
    );
    assert_eq!(
        tiers[2].requirement.alternatives,
        vec![vec![
            GroupRequirement {
                group: "cfo".into(),
                k: 1
            },
            GroupRequirement {
                group: "officers".into(),
                k: 3
            },
        ]]
    );
    assert_eq!(tiers[2].delay_secs, 86_400);
    assert!(tiers[2].allowlist_only);
    assert!(tiers[2].up_to.is_none());
    assert_eq!(p.allowlist().len(), 3);
    let windows: Vec<u64> = p.velocity().iter().map(|v| v.window_secs).collect();
    assert_eq!(windows, [86_400, 604_800, 2_592_000]);
    assert_eq!(p.fees().max_fee, Amount::from_sat(2_000_000));
    assert_eq!(p.fees().max_fee_rate_sat_vb, 500);
    assert_eq!(p.fees().fee_rate_band_percent, Some(25));
    assert_eq!(p.approval_rules().max_age_secs, 172_800);
    assert_eq!(p.approval_rules().max_age_blocks, Some(288));
}

#[test]
fn example_keys_are_the_fixed_test_keys() {
    let p = example();
    for (person, _) in PERSONS.iter().filter(|(p, _)| *p != "mallory") {
        assert_eq!(p.key_of(person), Some(xonly_of(person)), "{person}");
        assert_eq!(p.person_of(&xonly_of(person)), Some(*person));
    }
    assert_eq!(p.key_of("mallory"), None);
    assert_eq!(p.person_of(&xonly_of("mallory")), None);
}

#[test]
fn tier_bounds_are_inclusive() {
    let p = example();
    let name = |sat| p.tier_for(Amount::from_sat(sat)).unwrap().name.clone();
    assert_eq!(name(0), "small");
    assert_eq!(name(100_000_000), "small");
    assert_eq!(name(100_000_001), "medium");
    assert_eq!(name(5_000_000_000), "medium");
    assert_eq!(name(5_000_000_001), "large");
    assert_eq!(name(u64::MAX), "large");
}

#[test]
fn unknown_group_is_named_with_its_field() {
    let t = mutate(
        EXAMPLE,
        "require = [\"duty-officers\"]",
        "require = [\"cfo2\"]",
    );
    assert_eq!(parse_err(&t), "tiers[1].require[0]: unknown group \"cfo2\"");
    let t = mutate(
        EXAMPLE,
        "proof_quorum = \"officers\"",
        "proof_quorum = \"auditors\"",
    );
    assert_eq!(parse_err(&t), "proof_quorum: unknown group \"auditors\"");
    let t = mutate(
        EXAMPLE,
        "require = [\"officers\", \"cfo\"]",
        "any_of = [[\"officers\"], [\"cfo\", \"board\"]]",
    );
    assert_eq!(
        parse_err(&t),
        "tiers[2].any_of[1][1]: unknown group \"board\""
    );
}

#[test]
fn thresholds_must_be_within_one_and_n() {
    let t = mutate(EXAMPLE, "name = \"cfo\"\nk = 1", "name = \"cfo\"\nk = 3");
    assert_eq!(
        parse_err(&t),
        "groups[2].k: k = 3 must be between 1 and n = 2"
    );
    let t = mutate(EXAMPLE, "name = \"cfo\"\nk = 1", "name = \"cfo\"\nk = 0");
    assert_eq!(
        parse_err(&t),
        "groups[2].k: k = 0 must be between 1 and n = 2"
    );
    let t = mutate(
        EXAMPLE,
        "[{ group = \"duty-officers\", k = 1 }]",
        "[{ group = \"duty-officers\", k = 4 }]",
    );
    assert_eq!(
        parse_err(&t),
        "tiers[0].require[0].k: k = 4 must be between 1 and n = 3"
    );
    let t = mutate(EXAMPLE, "[admins]\nk = 2", "[admins]\nk = 4");
    assert_eq!(parse_err(&t), "admins.k: k = 4 must be between 1 and n = 3");
}

#[test]
fn duplicate_person_in_a_group_is_refused() {
    let t = mutate(
        EXAMPLE,
        "{ person = \"grace\", pubkey = \"989c",
        "{ person = \"frank\", pubkey = \"989c",
    );
    assert_eq!(
        parse_err(&t),
        "groups[2].members[1]: duplicate person \"frank\""
    );
}

#[test]
fn keys_are_checked() {
    let t = mutate(EXAMPLE, "989c0b76cb56", "989c0b76cb5");
    assert!(parse_err(&t).starts_with("groups[2].members[1].pubkey: bad x-only public key"));
    // Not the x coordinate of a curve point.
    let zero = "0".repeat(64);
    let t = mutate(
        EXAMPLE,
        "989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f",
        &zero,
    );
    assert!(parse_err(&t).starts_with("groups[2].members[1].pubkey: bad x-only public key"));
    // Grace with Frank's key.
    let t = mutate(
        EXAMPLE,
        "989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f",
        "f006a18d5653c4edf5391ff23a61f03ff83d237e880ee61187fa9f379a028e0a",
    );
    assert_eq!(
        parse_err(&t),
        "groups[2].members[1].pubkey: key of \"grace\" is also the key of \"frank\""
    );
    // Alice with another key among the duty officers than among the officers.
    let dup = mutate(
        EXAMPLE,
        "name = \"duty-officers\"\nk = 2\nmembers = [\n    { person = \"alice\", pubkey = \"1b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f\" }",
        "name = \"duty-officers\"\nk = 2\nmembers = [\n    { person = \"alice\", pubkey = \"552c630b64b54bf50210c9e253d38bd4949c72e22873500f6285c2bede312a84\" }",
    );
    assert_eq!(
        parse_err(&dup),
        "groups[1].members[0].pubkey: person \"alice\" has a different key elsewhere in the policy"
    );
}

#[test]
fn tiers_must_ascend_and_cover_every_amount() {
    let t = mutate(
        EXAMPLE,
        "up_to_sat = 5_000_000_000",
        "up_to_sat = 100_000_000",
    );
    assert_eq!(
        parse_err(&t),
        "tiers[1].up_to_sat: tiers must be in strictly ascending order of up_to_sat"
    );
    let t = mutate(
        EXAMPLE,
        "require = [\"officers\", \"cfo\"]",
        "up_to_sat = 9_000_000_000\nrequire = [\"officers\", \"cfo\"]",
    );
    assert!(parse_err(&t).starts_with("tiers[2].up_to_sat: the last tier must be unbounded"));
    let t = mutate(EXAMPLE, "up_to_sat = 5_000_000_000\n", "");
    assert_eq!(
        parse_err(&t),
        "tiers[1].up_to_sat: only the last tier may be unbounded"
    );
}

#[test]
fn requirement_forms() {
    let t = mutate(
        EXAMPLE,
        "require = [\"officers\", \"cfo\"]",
        "require = [\"officers\"]\nany_of = [[\"cfo\"]]",
    );
    assert_eq!(
        parse_err(&t),
        "tiers[2]: set exactly one of require and any_of"
    );
    let t = mutate(
        EXAMPLE,
        "require = [\"officers\", \"cfo\"]",
        "delay_secs = 1",
    );
    assert!(matches!(
        Policy::from_toml(&t),
        Err(PolicyError::Toml(_)) | Err(PolicyError::RequirementForm { .. })
    ));
    let t = mutate(
        EXAMPLE,
        "require = [\"officers\", \"cfo\"]",
        "require = [\"officers\", \"officers\"]",
    );
    assert_eq!(
        parse_err(&t),
        "tiers[2].require[1]: duplicate requirement of group \"officers\""
    );
    let t = mutate(EXAMPLE, "require = [\"officers\", \"cfo\"]", "require = []");
    assert_eq!(parse_err(&t), "tiers[2].require: must not be empty");
    let t = mutate(
        EXAMPLE,
        "require = [\"officers\", \"cfo\"]",
        "any_of = [[\"officers\", \"cfo\"], [\"cfo\", \"officers\"]]",
    );
    assert_eq!(
        parse_err(&t),
        "tiers[2].any_of[1]: duplicate requirement alternative"
    );
}

#[test]
fn other_fields_are_checked() {
    let t = mutate(
        EXAMPLE,
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
        "bc1qnotanaddress",
    );
    assert!(parse_err(&t).starts_with("allowlist[1].address: bad address \"bc1qnotanaddress\""));
    let t = mutate(
        EXAMPLE,
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
        "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
    );
    assert!(parse_err(&t).starts_with("allowlist[1].address: duplicate address"));
    let t = mutate(EXAMPLE, "window_secs = 604800", "window_secs = 0");
    assert_eq!(
        parse_err(&t),
        "velocity[1].window_secs: must be greater than zero"
    );
    let t = mutate(EXAMPLE, "window_secs = 604800", "window_secs = 86400");
    assert_eq!(
        parse_err(&t),
        "velocity[1].window_secs: duplicate window 86400 s"
    );
    let t = mutate(EXAMPLE, "max_age_secs = 172800", "max_age_secs = 0");
    assert_eq!(
        parse_err(&t),
        "approvals.max_age_secs: must be greater than zero"
    );
    let t = mutate(EXAMPLE, "delay_secs = 86400", "delay_secs = 99999999999");
    assert!(parse_err(&t).starts_with("tiers[2].delay_secs: 99999999999 is above the limit"));
    let t = mutate(EXAMPLE, "name = \"cfo\"", "name = \"officers\"");
    assert_eq!(
        parse_err(&t),
        "groups[2].name: duplicate group \"officers\""
    );
    let t = mutate(EXAMPLE, "name = \"cfo\"", "name = \"c f o\"");
    assert!(parse_err(&t).starts_with("groups[2].name: invalid name \"c f o\""));
    let t = mutate(
        EXAMPLE,
        "max_fee_sat = 2_000_000",
        "max_fee_sat = 2_000_000\nmax_fee_btc = 1",
    );
    assert!(matches!(Policy::from_toml(&t), Err(PolicyError::Toml(_))));
    let t = mutate(EXAMPLE, "version = 1\n", "");
    assert!(parse_err(&t).contains("version"));
}

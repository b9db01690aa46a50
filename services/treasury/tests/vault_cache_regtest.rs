//! The per-store cache of merged vault changesets against what can go wrong with it: two
//! services (two caches) on one PostgreSQL schema, a regtest node funding the vault. Each
//! instance must see the rows the other appended (addresses it issued, syncs, revealed change)
//! and, with many builders racing across both, no coin is ever reserved twice and every coin
//! is spent by exactly one request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use bdk_wallet::bitcoin::{Address, Amount, FeeRate, OutPoint};
use bdk_wallet::KeychainKind;
use common::{node_config, officer, Faucet, NET};
use custody::vault::spend::{FeeCaps, Payment, SpendError, SpendRequest};
use custody::vault::{Template, TemplateKey, VaultConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use regtest::node_or_skip;
use treasury::service::vaults::{OpError, VaultService};
use treasury::store::LedgerStore;

const COINS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cached_instances_on_postgres_share_one_vault_state_and_never_share_a_coin() {
    let Some(node) = node_or_skip("vault_cache_two_instances") else {
        return;
    };
    let Ok(url) = std::env::var("TREASURY_TEST_POSTGRES_URL") else {
        regtest::skip_or_fail(
            "postgres",
            "vault_cache_two_instances",
            &"TREASURY_TEST_POSTGRES_URL is not set",
        );
        return;
    };
    let schema = format!("vcache_{}_{}", std::process::id(), rand::random::<u32>());
    let a = VaultService::new(
        LedgerStore::open_in_schema(&url, Some(&schema))
            .await
            .unwrap(),
    );
    let b = VaultService::new(
        LedgerStore::open_in_schema(&url, Some(&schema))
            .await
            .unwrap(),
    );
    let (o1, o2, policy) = (officer(171), officer(172), officer(179));
    // k = every key: the policy key signs every spend
    let t = Template::SortedMulti {
        k: 3,
        officers: vec![
            TemplateKey::parse(&o1.public).unwrap(),
            TemplateKey::parse(&o2.public).unwrap(),
        ],
        policy_key: TemplateKey::parse(&policy.public).unwrap(),
    };
    let name = "cached";
    a.create(
        VaultConfig::new(name, t.build(NET).unwrap(), 0).unwrap(),
        "t",
    )
    .await
    .unwrap();

    // Addresses handed out by both instances in turn: each sees the other's issued index
    // (a stale cache would hand out an index twice).
    let mut addrs = Vec::new();
    for i in 0..COINS {
        let svc = if i.is_multiple_of(2) { &a } else { &b };
        // Warm both caches before the other instance appends.
        a.vaults.load(name).await.unwrap();
        b.vaults.load(name).await.unwrap();
        let addr = svc.next_address(name).await.unwrap();
        assert_eq!(addr.index, u32::try_from(i).unwrap(), "instance {}", i % 2);
        addrs.push(addr.address);
    }
    let distinct: BTreeSet<String> = addrs.iter().map(ToString::to_string).collect();
    assert_eq!(distinct.len(), COINS);

    // Funded and synced through `a`: `b` (cache warm, rows before the sync) sees the coins.
    let mut faucet = Faucet::new(&node, 1);
    let outputs: Vec<(Address, Amount)> = addrs
        .iter()
        .map(|s| {
            (
                Address::from_str(&s.to_string()).unwrap().assume_checked(),
                Amount::from_sat(1_0000_0000),
            )
        })
        .collect();
    faucet.pay_many(&node, &outputs);
    node.mine_blocks(1, &node.new_address()).unwrap();
    let before_sync = b.vaults.load(name).await.unwrap();
    assert!(before_sync.utxos().is_empty());
    let (synced, _) = a.sync(name, &node_config(&node)).await.unwrap();
    assert_eq!(synced.utxos().len(), COINS);
    let seen_by_b = b.vaults.load(name).await.unwrap();
    assert_eq!(seen_by_b.utxos().len(), COINS);
    assert_eq!(seen_by_b.balance(), synced.balance());
    assert_eq!(seen_by_b.tip_height(), synced.tip_height());

    // Twelve builders, six per instance, all at once; each payment needs one coin.
    let dest = node.new_address();
    let req = SpendRequest {
        payments: vec![Payment {
            address: Address::from_str(&dest.to_string()).unwrap(),
            amount: Amount::from_sat(5000_0000),
        }],
        ..Default::default()
    };
    let rate = FeeRate::from_sat_per_vb_u32(2);
    let ttl = Duration::from_secs(600);
    let build = |svc: VaultService, id: String, seed: u64| {
        let req = req.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let r = svc
                .build_psbt(name, &id, &req, rate, &FeeCaps::default(), ttl, &mut rng)
                .await;
            (id, r)
        }
    };
    let racers: Vec<_> = (0..12u64)
        .map(|i| {
            let svc = if i.is_multiple_of(2) {
                a.clone()
            } else {
                b.clone()
            };
            tokio::spawn(build(svc, format!("race-{i}"), i))
        })
        .collect();
    let mut taken: Vec<OutPoint> = Vec::new();
    let mut ok = 0usize;
    for r in racers {
        let (id, r) = r.await.unwrap();
        match r {
            Ok(built) => {
                ok += 1;
                assert_eq!(built.request, id);
                taken.extend(built.built.inputs.iter().copied());
            }
            Err(OpError::Spend(SpendError::InsufficientFunds { .. })) => {}
            // Five collisions in a row give up clearly; the coins stay free for later.
            Err(OpError::Store(e)) if e.to_string().contains("colliding") => {}
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert!(ok >= 1);
    let mut unique: BTreeSet<OutPoint> = taken.iter().copied().collect();
    assert_eq!(
        unique.len(),
        taken.len(),
        "a coin was reserved twice: {taken:?}"
    );
    assert_eq!(a.vaults.reserved(name, 0).await.unwrap(), unique);
    assert_eq!(b.vaults.reserved(name, 0).await.unwrap(), unique);

    // What is left goes one build at a time, alternating instances, until the funds run out:
    // every coin is reserved exactly once in all.
    let mut i = 100u64;
    loop {
        let svc = if i.is_multiple_of(2) {
            a.clone()
        } else {
            b.clone()
        };
        let (_, r) = build(svc, format!("after-{i}"), i).await;
        match r {
            Ok(built) => {
                for op in &built.built.inputs {
                    assert!(unique.insert(*op), "{op} reserved twice");
                }
            }
            Err(OpError::Spend(SpendError::InsufficientFunds { .. })) => break,
            Err(e) => panic!("after-{i}: {e}"),
        }
        i += 1;
        assert!(i < 100 + COINS as u64 + 2, "more builds than coins");
    }
    assert_eq!(unique.len(), COINS);
    assert_eq!(a.vaults.reserved(name, 0).await.unwrap().len(), COINS);

    // Change addresses the builds revealed on either instance are known to both.
    let va = a.vaults.load(name).await.unwrap();
    let vb = b.vaults.load(name).await.unwrap();
    let ia = va.wallet().derivation_index(KeychainKind::Internal);
    let ib = vb.wallet().derivation_index(KeychainKind::Internal);
    assert_eq!(ia, ib);
    assert!(ia.is_some());
}

//! The regtest node harness against a real Bitcoin Core node.

use std::time::Duration;

use regtest::bitcoincore_rpc::{Auth, Client, RpcApi};
use regtest::{node_or_skip, test_key, Error};

fn process_alive(pid: u32) -> bool {
    // A zombie would still have /proc/<pid>; the harness waits for its children, so a
    // stopped node has no entry at all.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn mine_101_blocks_read_tip_and_stop() {
    let Some(mut node) = node_or_skip("mine_101_blocks_read_tip_and_stop") else {
        return;
    };
    let (key, address) = node.new_key();
    assert_eq!(node.height().unwrap(), 0);
    let hashes = node.mine_blocks(101, &address).unwrap();
    assert_eq!(hashes.len(), 101);
    node.wait_for_height(101, Duration::from_secs(30)).unwrap();

    let (tip, height) = node.tip().unwrap();
    assert_eq!(height, 101);
    assert_eq!(tip, *hashes.last().unwrap());
    assert_eq!(node.client().get_block_hash(101).unwrap(), tip);

    // All 101 coinbases pay our address: 101 x 50 BTC, seen by the node's UTXO set scan.
    let scan = node
        .rpc(
            "scantxoutset",
            &[
                "start".into(),
                serde_json::json!([format!("addr({address})")]),
            ],
        )
        .unwrap();
    assert_eq!(scan["success"], true);
    assert_eq!(scan["unspents"].as_array().unwrap().len(), 101);
    let total_sat = (scan["total_amount"].as_f64().unwrap() * 1e8).round() as u64;
    assert_eq!(total_sat, 5050 * 100_000_000);

    // The node derives the same address from the descriptor of our key.
    let desc = format!(
        "wpkh({})",
        key.public_key(&regtest::bitcoin::secp256k1::Secp256k1::new())
    );
    assert_eq!(node.descriptor_address(&desc).unwrap(), address);

    let pid = node.pid().unwrap();
    assert!(process_alive(pid));
    let datadir = node.datadir().to_path_buf();
    node.stop().unwrap();
    assert!(!process_alive(pid), "bitcoind {pid} still runs after stop");
    drop(node);
    assert!(
        !datadir.exists(),
        "datadir {} left behind",
        datadir.display()
    );
}

#[test]
fn two_nodes_start_concurrently_on_distinct_ports() {
    let starts: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| node_or_skip("two_nodes_start_concurrently_on_distinct_ports"))
        })
        .collect();
    let nodes: Vec<_> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let [Some(a), Some(b)] = <[_; 2]>::try_from(nodes).unwrap() else {
        return;
    };
    assert_ne!(a.rpc_port(), b.rpc_port());
    assert_ne!(a.p2p_port(), b.p2p_port());
    assert_ne!(a.datadir(), b.datadir());
    assert_ne!(a.new_address(), b.new_address());
    let address = a.new_address();
    a.mine_blocks(3, &address).unwrap();
    assert_eq!(a.height().unwrap(), 3);
    assert_eq!(b.height().unwrap(), 0, "the nodes must not share a chain");
}

#[test]
fn clients_and_descriptor_rpcs_work_without_a_wallet() {
    let Some(node) = node_or_skip("clients_and_descriptor_rpcs_work_without_a_wallet") else {
        return;
    };
    let (user, password) = node.credentials().unwrap();
    let by_password = Client::new(&node.rpc_url(), Auth::UserPass(user, password)).unwrap();
    assert_eq!(by_password.get_block_count().unwrap(), 0);
    assert_eq!(node.new_client().unwrap().get_block_count().unwrap(), 0);

    let (key, address) = node.new_key();
    let other = node.new_address();
    assert_ne!(address, other);
    let hashes = node.mine_blocks(2, &address).unwrap();
    node.mine_blocks(1, &other).unwrap();

    let secp = regtest::bitcoin::secp256k1::Secp256k1::new();
    let desc = format!("wpkh({})", key.public_key(&secp));
    let info = node
        .rpc("getdescriptorinfo", &[desc.clone().into()])
        .unwrap();
    let desc = format!("{desc}#{}", info["checksum"].as_str().unwrap());

    // getdescriptoractivity reads the given blocks: no index needed.
    let block_list: Vec<serde_json::Value> = hashes.iter().map(|h| h.to_string().into()).collect();
    let activity = node
        .rpc(
            "getdescriptoractivity",
            &[block_list.into(), serde_json::json!([desc.clone()])],
        )
        .unwrap();
    let receives = activity["activity"].as_array().unwrap();
    assert_eq!(receives.len(), 2, "{activity}");
    assert!(receives.iter().all(|a| a["type"] == "receive"));

    // scanblocks uses the block filter index the harness turns on.
    node.wait_for_index("basic block filter index", 3).unwrap();
    let scan = node
        .rpc("scanblocks", &["start".into(), serde_json::json!([desc])])
        .unwrap();
    let found: Vec<&str> = scan["relevant_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let expected: Vec<String> = hashes.iter().map(|h| h.to_string()).collect();
    assert_eq!(found, expected);
}

#[test]
fn a_killed_node_gives_an_rpc_error_not_a_hang() {
    let Some(mut node) = node_or_skip("a_killed_node_gives_an_rpc_error_not_a_hang") else {
        return;
    };
    let pid = node.pid().unwrap();
    node.kill().unwrap();
    assert!(!process_alive(pid));
    let err = node.height().unwrap_err();
    assert!(matches!(err, Error::Rpc { .. }), "{err:?}");
    assert!(err.to_string().contains("getblockcount"), "{err}");
}

#[test]
fn a_node_dropped_during_a_panic_is_stopped() {
    let Some(node) = node_or_skip("a_node_dropped_during_a_panic_is_stopped") else {
        return;
    };
    let pid = node.pid().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _node = node;
        panic!("a test failing while it holds a node");
    }));
    assert!(result.is_err());
    assert!(!process_alive(pid), "bitcoind {pid} survived the panic");
}

#[test]
fn require_reads_the_ci_variables() {
    // The variable name is derived from the part; an unset part is optional.
    assert!(!regtest::require("no-such-part-for-sure"));
}

#[test]
fn test_keys_are_deterministic_regtest_p2wpkh() {
    let (k1, a1) = test_key("x");
    let (k2, a2) = test_key("x");
    assert_eq!(k1, k2);
    assert_eq!(a1, a2);
    assert_ne!(test_key("y").1, a1);
    assert!(a1.to_string().starts_with("bcrt1q"), "{a1}");
}

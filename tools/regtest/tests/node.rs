//! The regtest node harness against a real Bitcoin Core node.

use std::time::Duration;

use regtest::bitcoincore_rpc::RpcApi;
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
    let (_, address) = test_key("node-test");
    assert_eq!(node.height().unwrap(), 0);
    let hashes = node.mine_to(101, &address).unwrap();
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
    let (key, _) = test_key("node-test");
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
fn two_nodes_run_side_by_side() {
    let Some(a) = node_or_skip("two_nodes_run_side_by_side") else {
        return;
    };
    let Some(b) = node_or_skip("two_nodes_run_side_by_side") else {
        return;
    };
    assert_ne!(a.rpc_port(), b.rpc_port());
    assert_ne!(a.datadir(), b.datadir());
    let (_, address) = test_key("side-by-side");
    a.mine_to(3, &address).unwrap();
    assert_eq!(a.height().unwrap(), 3);
    assert_eq!(b.height().unwrap(), 0, "the nodes must not share a chain");
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

//! The copy-paste walk-through the demo prints: a spend from creation to broadcast, and an
//! auditor's ledger check and reserve proof. Kept apart from the set-up so that the text can
//! follow the API's routes without touching the set-up code.

use super::{sh_quote, PolicyKeyHolder, Setup, OFFICERS, VAULT};

/// The walk-through for the demo served at `url` (shell commands; `. env.sh` first).
pub(super) fn walkthrough(setup: &Setup, url: &str) -> String {
    let l = &setup.layout;
    let q = |p: &std::path::Path| sh_quote(&p.display().to_string());
    let env = q(&l.env_sh());
    let mut t = String::new();
    let mut line = |s: &str| {
        t.push_str(s);
        t.push('\n');
    };
    line("==================================================================================");
    line(" strategic reserve demo");
    line("==================================================================================");
    line(&format!(
        " API            {url}   (TLS; CA certificate {})",
        l.tls_cert().display()
    ));
    line(&format!(" directory      {}", l.dir.display()));
    line(&format!(" config         {}", l.config().display()));
    line(&format!(
        " bitcoind       {} (regtest, cookie {})",
        setup.node.rpc_url(),
        l.cookie().display()
    ));
    line(&format!(" database       {}", l.db_url()));
    match setup.holder {
        PolicyKeyHolder::SoftHsm => line(&format!(
            " policy key     {} in the SoftHSM2 token \"reserve\" (PIN file {})",
            setup.policy_key,
            l.hsm_pin().display()
        )),
        PolicyKeyHolder::Software => line(&format!(
            " policy key     {} in a SOFTWARE keystore {} (not an HSM)",
            setup.policy_key,
            l.policy_keystore().display()
        )),
    }
    line(&format!(
        " vault          {VAULT}: policy key AND 2 of 3 officers (alice, bob, carol), recovery 2 of 3 after 144 blocks; {} sat confirmed",
        setup.balance.to_sat()
    ));
    line(&format!(" ledger key     {}", setup.ledger_verifier_key));
    line("");
    line(" tokens (also in tokens.json, mode 0600; env.sh exports them as $TOKEN_<PRINCIPAL>):");
    for tok in setup.tokens.values() {
        let scope = if tok.vaults.is_empty() {
            "all vaults".to_string()
        } else {
            tok.vaults.join(",")
        };
        line(&format!(
            "   {:<16} {:<10} {:<10} {}",
            tok.principal, tok.role, scope, tok.token
        ));
    }
    line("");
    line("In another terminal (every command below uses the variables of env.sh):");
    line("");
    line(&format!("  . {env}"));
    line("  curl -sS --cacert \"$CACERT\" \"$API/healthz\"; echo");
    line("  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_INTEGRATOR\" \"$API/v1/vaults/reserve/balance\"; echo");
    line("");
    line("1. The integrator asks for a payment of 2 BTC (the policy's medium tier: 2 of the 3 duty officers):");
    line("");
    line(&format!(
        "  DEST={}   # any regtest address",
        setup.destination
    ));
    line("  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_INTEGRATOR\" \\");
    line("       -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-pay-1' \\");
    line("       -d \"{\\\"vault\\\":\\\"reserve\\\",\\\"payments\\\":[{\\\"address\\\":\\\"$DEST\\\",\\\"amount_sat\\\":200000000}],\\\"fee_rate_sat_vb\\\":5}\" \\");
    line("       \"$API/v1/spends\" > created.json; cat created.json; echo");
    line("  ID=$(sed -n 's/^{\"id\":\"\\([^\"]*\\)\".*/\\1/p' created.json); echo \"request $ID\"");
    line("");
    line("2. Two officers review and approve it offline (the approval is their own signature over the exact transaction):");
    line("");
    line("  treasury spend show --id \"$ID\" --json > req.json");
    line("  treasury officer review req.json");
    for o in &OFFICERS[1..] {
        line(&format!(
            "  treasury officer approve req.json --key {} --passphrase-file {} > approval-{o}.json",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        ));
    }
    line("  # ... and submit their approvals through the API with their own tokens:");
    for o in &OFFICERS[1..] {
        line(&format!(
            "  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_{}\" -H 'Content-Type: application/json' \\",
            o.to_ascii_uppercase()
        ));
        line(&format!(
            "       --data-binary @approval-{o}.json \"$API/v1/spends/$ID/approvals\"; echo"
        ));
    }
    line("");
    line(
        "3. The policy key signs through the policy signer, which re-checks the request by itself:",
    );
    line("");
    match setup.holder {
        PolicyKeyHolder::SoftHsm => line("  TREASURY_HSM_PIN=$(cat \"$TREASURY_HSM_PIN_FILE\") treasury spend sign-policy --id \"$ID\" > /dev/null"),
        PolicyKeyHolder::Software => line("  treasury spend sign-policy --id \"$ID\" --keystore \"$TREASURY_POLICY_KEYSTORE\" --passphrase-file \"$TREASURY_POLICY_PASSPHRASE_FILE\" > /dev/null"),
    }
    line("  # or through the API (the server's own signer, [signer] in treasury.toml):");
    line("  #   curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_ADMIN\" -X POST \"$API/v1/spends/$ID/policy-sign\"");
    line("");
    line("4. Two officers sign the PSBT on their own devices and submit it:");
    line("");
    line("  treasury spend psbt --id \"$ID\" > unsigned.psbt");
    for o in &OFFICERS[..2] {
        line(&format!(
            "  treasury officer sign --key {} --passphrase-file {} unsigned.psbt > signed-{o}.psbt",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        ));
    }
    line("  treasury spend submit-psbt --id \"$ID\" --by alice signed-alice.psbt signed-bob.psbt > /dev/null");
    line("  # or through the API, each officer with their own token:");
    line("  #   curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_ALICE\" -H 'Content-Type: application/json' \\");
    line("  #        -d \"{\\\"psbt\\\":\\\"$(cat signed-alice.psbt)\\\"}\" \"$API/v1/spends/$ID/psbts\"");
    line("");
    line("5. Finalize (every input verified), testmempoolaccept, broadcast; mine a block; follow:");
    line("");
    line("  treasury spend broadcast --id \"$ID\"");
    line("  btc generatetoaddress 6 \"$DEST\" > /dev/null");
    line("  treasury spend follow --id \"$ID\"");
    line("  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_INTEGRATOR\" \"$API/v1/spends/$ID\"; echo");
    line("");
    line("6. The auditor checks the ledger: a signed checkpoint, the entries, and a consistency proof:");
    line("");
    line("  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_ADMIN\" -X POST \"$API/v1/ledger/checkpoints\"; echo");
    line("  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_AUDITOR\" \"$API/v1/ledger/checkpoints/latest\"; echo");
    line("  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_AUDITOR\" \"$API/v1/ledger/entries/1\"; echo");
    line("  curl -sS --cacert \"$CACERT\" -H \"Authorization: Bearer $TOKEN_DEMO_AUDITOR\" \"$API/v1/ledger/proofs/consistency?from=1\"; echo");
    line("  # offline, from an export and a signed checkpoint:");
    line(&format!(
        "  treasury ledger checkpoint --key-file {} > checkpoint.txt && treasury ledger export > entries.jsonl",
        q(&l.ledger_key())
    ));
    line(&format!(
        "  treasury audit ledger --entries entries.jsonl --checkpoint checkpoint.txt --key {}",
        sh_quote(&setup.ledger_verifier_key)
    ));
    line("");
    line("7. A proof of reserves: requested, approved by the policy's proof quorum (3 officers), signed by");
    line("   two officers and the policy key, then bundled; the auditor verifies the bundle against their own node:");
    line("");
    line("  PROOF=$(treasury reserves prove --vault reserve --message 'demo audit' | head -n 1)");
    line("  treasury reserves subject \"$PROOF\" > proof-subject.json");
    line("  treasury officer review proof-subject.json");
    for o in &OFFICERS {
        line(&format!(
            "  treasury officer approve proof-subject.json --key {} --passphrase-file {} > proof-approval-{o}.json",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        ));
        line(&format!(
            "  treasury reserves approve \"$PROOF\" --approval proof-approval-{o}.json --actor {o}"
        ));
    }
    line("  treasury reserves psbt \"$PROOF\" > proof.psbt");
    for o in &OFFICERS[..2] {
        line(&format!(
            "  treasury officer sign --key {} --passphrase-file {} proof.psbt > proof-signed-{o}.psbt",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        ));
        line(&format!(
            "  treasury reserves submit-psbt \"$PROOF\" --psbt proof-signed-{o}.psbt --by {o}"
        ));
    }
    match setup.holder {
        PolicyKeyHolder::SoftHsm => line("  TREASURY_HSM_PIN=$(cat \"$TREASURY_HSM_PIN_FILE\") treasury reserves sign-policy \"$PROOF\" > /dev/null"),
        PolicyKeyHolder::Software => line("  # (the policy key of this demo is a software keystore: `reserves sign-policy` needs the HSM token)"),
    }
    line("  treasury reserves bundle \"$PROOF\" --out bundle");
    line("  treasury audit reserves bundle --bitcoind-url \"$TREASURY_RPC_URL\" --rpc-cookie \"$TREASURY_RPC_COOKIE\"");
    line("");
    line("Ctrl-C stops the API server and bitcoind; `treasury demo` again continues with the same chain, keys, vault and tokens.");
    t
}

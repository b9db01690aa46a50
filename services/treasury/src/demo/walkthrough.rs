//! The copy-paste walk-through the demo prints: a spend from creation to broadcast, and an
//! auditor's ledger check and reserve proof. Kept apart from the set-up so that the text can
//! follow the API's routes without touching the set-up code.
//!
//! One source of truth: the commands are data ([`steps`]); the printed text
//! ([`walkthrough`]) and the runnable script `walkthrough.sh` ([`script`], which the demo test
//! runs line by line against a live demo) are both rendered from them, so what a user copies
//! is what the test ran.

use super::{sh_quote, PolicyKeyHolder, Setup, OFFICERS, VAULT};

/// One line of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A shell command to run (may span lines joined by `\`).
    Run(String),
    /// A remark (printed as a `#` comment, not run).
    Note(String),
}

/// A numbered step of the walk-through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// What the step does.
    pub(crate) title: String,
    /// Its lines, in order.
    pub(crate) lines: Vec<Line>,
}

/// `curl` with the demo's CA, failing (exit 22, body shown) on an HTTP error.
const CURL: &str = "curl -sS --fail-with-body --cacert \"$CACERT\"";

fn auth(token_var: &str) -> String {
    format!("-H \"Authorization: Bearer ${token_var}\"")
}

fn token_var(principal: &str) -> String {
    format!("TOKEN_{}", principal.replace('-', "_").to_ascii_uppercase())
}

/// The steps for the demo served at `url` (shell commands; `. env.sh` first).
pub(crate) fn steps(setup: &Setup, _url: &str) -> Vec<Step> {
    let l = &setup.layout;
    let q = |p: &std::path::Path| sh_quote(&p.display().to_string());
    let env = q(&l.env_sh());
    let run = Line::Run;
    let note = |s: &str| Line::Note(s.to_string());
    let integrator = auth("TOKEN_DEMO_INTEGRATOR");
    let admin = auth("TOKEN_DEMO_ADMIN");
    let auditor = auth("TOKEN_DEMO_AUDITOR");
    let json = "-H 'Content-Type: application/json'";
    let mut out = vec![Step {
        title: "In another terminal (every command below uses the variables of env.sh):".into(),
        lines: vec![
            run(format!(". {env}")),
            run(format!("{CURL} \"$API/healthz\"; echo")),
            run(format!(
                "{CURL} {integrator} \"$API/v1/vaults/{VAULT}/balance\"; echo"
            )),
        ],
    },
    Step {
        title: "1. The integrator asks for a payment of 2 BTC (the policy's medium tier: 2 of the 3 duty officers):".into(),
        lines: vec![
            run(format!("DEST={}   # any regtest address", setup.destination)),
            run(format!(
                "{CURL} {integrator} \\\n     {json} -H 'Idempotency-Key: demo-pay-1' \\\n     -d \"{{\\\"vault\\\":\\\"{VAULT}\\\",\\\"payments\\\":[{{\\\"address\\\":\\\"$DEST\\\",\\\"amount_sat\\\":200000000}}],\\\"fee_rate_sat_vb\\\":5}}\" \\\n     \"$API/v1/spends\" > created.json; cat created.json; echo"
            )),
            run("ID=$(sed -n 's/^{\"id\":\"\\([^\"]*\\)\".*/\\1/p' created.json); echo \"request $ID\"".into()),
        ],
    }];

    let mut approve = vec![
        run("treasury spend show --id \"$ID\" --json > req.json".into()),
        run("treasury officer review req.json".into()),
    ];
    for o in &OFFICERS[1..] {
        approve.push(run(format!(
            "treasury officer approve req.json --key {} --passphrase-file {} > approval-{o}.json",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        )));
    }
    approve.push(note(
        "... and submit their approvals through the API with their own tokens:",
    ));
    for o in &OFFICERS[1..] {
        approve.push(run(format!(
            "{CURL} {} {json} \\\n     --data-binary @approval-{o}.json \"$API/v1/spends/$ID/approvals\" > /dev/null",
            auth(&token_var(o))
        )));
    }
    out.push(Step {
        title: "2. Two officers review and approve it offline (the approval is their own signature over the exact transaction):".into(),
        lines: approve,
    });

    let policy = run(
        "treasury spend sign-policy --id \"$ID\" --signer \"$TREASURY_SIGNER_SOCKET\" > /dev/null"
            .into(),
    );
    out.push(Step {
        title:
            "3. The policy key signs in the policy signer process, which judges the request from its own state:"
                .into(),
        lines: vec![
            policy,
            note("or through the API (the server asks the same signer, [signer] socket in treasury.toml):"),
            note(&format!(
                "  {CURL} {admin} -X POST \"$API/v1/spends/$ID/policy-sign\""
            )),
        ],
    });

    let mut sign = vec![run(
        "treasury spend psbt --id \"$ID\" > unsigned.psbt".into()
    )];
    for o in &OFFICERS[..2] {
        sign.push(run(format!(
            "treasury officer sign --key {} --passphrase-file {} unsigned.psbt > signed-{o}.psbt",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        )));
    }
    sign.push(run("treasury spend submit-psbt --id \"$ID\" --by alice signed-alice.psbt signed-bob.psbt > /dev/null".into()));
    sign.push(note(
        "or through the API, each officer with their own token:",
    ));
    sign.push(note(&format!("  {CURL} {} {json} \\", auth("TOKEN_ALICE"))));
    sign.push(note(
        "       -d \"{\\\"psbt\\\":\\\"$(cat signed-alice.psbt)\\\"}\" \"$API/v1/spends/$ID/psbts\"",
    ));
    out.push(Step {
        title: "4. Two officers sign the PSBT on their own devices and submit it:".into(),
        lines: sign,
    });

    out.push(Step {
        title: "5. Finalize (every input verified), testmempoolaccept, broadcast; mine a block; follow:".into(),
        lines: vec![
            run("treasury spend broadcast --id \"$ID\"".into()),
            run("btc generatetoaddress 6 \"$DEST\" > /dev/null".into()),
            run("treasury spend follow --id \"$ID\"".into()),
            run(format!("{CURL} {integrator} \"$API/v1/spends/$ID\" > spend.json; cat spend.json; echo")),
        ],
    });

    out.push(Step {
        title: "6. The auditor checks the ledger: a signed checkpoint, the entries, and a consistency proof:".into(),
        lines: vec![
            run(format!("{CURL} {admin} -X POST \"$API/v1/ledger/checkpoints\"; echo")),
            run(format!("{CURL} {auditor} \"$API/v1/ledger/checkpoints/latest\"; echo")),
            run(format!("{CURL} {auditor} \"$API/v1/ledger/entries/1\"; echo")),
            run(format!("{CURL} {auditor} \"$API/v1/ledger/proofs/consistency?from=1\"; echo")),
            note("offline, from an export and a signed checkpoint:"),
            run(format!(
                "treasury ledger checkpoint --key-file {} > checkpoint.txt && treasury ledger export > entries.jsonl",
                q(&l.ledger_key())
            )),
            run(format!(
                "treasury audit ledger --entries entries.jsonl --checkpoint checkpoint.txt --key {}",
                sh_quote(&setup.ledger_verifier_key)
            )),
        ],
    });

    let mut reserve = vec![
        run(format!(
            "{CURL} {auditor} {json} \\\n     -d '{{\"vaults\":[\"{VAULT}\"],\"statement\":\"demo audit\"}}' \"$API/v1/reserves/proofs\" > proof.json; cat proof.json; echo"
        )),
        run("PROOF=$(sed -n 's/^{\"id\":\"\\([^\"]*\\)\".*/\\1/p' proof.json); echo \"proof $PROOF\"".into()),
        note("the policy's proof quorum (the three officers) reviews and approves the proof's subject offline:"),
        run(format!(
            "{CURL} {} \"$API/v1/reserves/proofs/$PROOF/subject\" > proof-subject.json",
            auth("TOKEN_ALICE")
        )),
        run("treasury officer review proof-subject.json".into()),
    ];
    for o in &OFFICERS {
        reserve.push(run(format!(
            "treasury officer approve proof-subject.json --key {} --passphrase-file {} > proof-approval-{o}.json",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        )));
        reserve.push(run(format!(
            "{CURL} {} {json} \\\n     --data-binary @proof-approval-{o}.json \"$API/v1/reserves/proofs/$PROOF/approvals\" > /dev/null",
            auth(&token_var(o))
        )));
    }
    reserve.extend([
        note("two officers sign the proof PSBT on their own devices and submit it:"),
        run(format!(
            "{CURL} {} \"$API/v1/reserves/proofs/$PROOF/psbt\" | sed -n 's/.*\"psbt\":\"\\([^\"]*\\)\".*/\\1/p' > proof-unsigned.psbt",
            auth("TOKEN_ALICE")
        )),
    ]);
    for o in &OFFICERS[..2] {
        reserve.push(run(format!(
            "treasury officer sign --key {} --passphrase-file {} proof-unsigned.psbt > proof-signed-{o}.psbt",
            q(&l.officer_key(o)),
            q(&l.officer_pass(o))
        )));
        reserve.push(run(format!(
            "{CURL} {} {json} \\\n     -d \"{{\\\"psbt\\\":\\\"$(cat proof-signed-{o}.psbt)\\\"}}\" \"$API/v1/reserves/proofs/$PROOF/psbt\"; echo",
            auth(&token_var(o))
        )));
    }
    reserve.push(note(
        "the policy key signs (it checks the proof can never be broadcast), then finalize:",
    ));
    reserve.push(run(format!(
        "{CURL} {} -X POST \"$API/v1/reserves/proofs/$PROOF/policy-signature\"; echo",
        auth("TOKEN_ALICE")
    )));
    reserve.push(run(format!(
        "{CURL} {auditor} -X POST \"$API/v1/reserves/proofs/$PROOF/finalize\" > /dev/null"
    )));
    reserve.push(note(
        "the auditor downloads the bundle and verifies it with their own node:",
    ));
    reserve.push(run(format!(
        "{CURL} {auditor} \"$API/v1/reserves/proofs/$PROOF/bundle\" > bundle.json"
    )));
    reserve.push(run(format!(
        "treasury audit reserves bundle.json --bitcoind-url \"$TREASURY_RPC_URL\" --rpc-cookie \"$TREASURY_RPC_COOKIE\" --ledger-key {}",
        sh_quote(&setup.ledger_verifier_key)
    )));
    out.push(Step {
        title: "7. The auditor asks for a proof of reserves; the officers approve and sign it; the auditor verifies the bundle against their own node:".into(),
        lines: reserve,
    });
    out
}

fn render_lines(t: &mut String, lines: &[Line]) {
    for l in lines {
        match l {
            Line::Run(cmd) => {
                for part in cmd.lines() {
                    t.push_str("  ");
                    t.push_str(part);
                    t.push('\n');
                }
            }
            Line::Note(n) => {
                t.push_str("  # ");
                t.push_str(n);
                t.push('\n');
            }
        }
    }
}

/// The runnable form of `steps`: a bash script that stops at the first command that fails,
/// naming it (`walkthrough.sh` in the demo directory; run it from a scratch directory).
pub(crate) fn script(steps: &[Step]) -> String {
    let mut t = String::from(
        "#!/usr/bin/env bash\n# Written by `treasury demo`: the walk-through's commands, as printed.\n\
         set -eo pipefail\n",
    );
    let mut n = 0usize;
    for s in steps {
        t.push_str(&format!("\n# {}\n", s.title));
        for l in &s.lines {
            match l {
                Line::Run(cmd) => {
                    n += 1;
                    let first = cmd.lines().next().unwrap_or_default();
                    t.push_str(&format!(
                        "echo {} >&2\n{cmd}\n",
                        sh_quote(&format!("+++ walkthrough command {n}: {first}"))
                    ));
                }
                Line::Note(note) => t.push_str(&format!("# {note}\n")),
            }
        }
    }
    t.push_str("echo '+++ walkthrough done' >&2\n");
    t
}

/// The walk-through for the demo served at `url` (shell commands; `. env.sh` first).
pub(super) fn walkthrough(setup: &Setup, url: &str) -> String {
    let l = &setup.layout;
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
    for s in steps(setup, url) {
        t.push_str(&s.title);
        t.push_str("\n\n");
        render_lines(&mut t, &s.lines);
        t.push('\n');
    }
    t.push_str(&format!(
        "The same commands are in {} (run it from an empty directory).\n",
        l.walkthrough_script().display()
    ));
    t.push_str("Ctrl-C stops the API server and bitcoind; `treasury demo` again continues with the same chain, keys, vault and tokens.\n");
    t
}

-- The BIP-322 proof-of-funds form of each proof-of-reserves request (issue 7, ADR 0014): a
-- to_sign PSBT over exactly the same UTXOs and the same message as the BIP-127 proof, with the
-- message challenge (by default the first vault's first receive address). Proofs requested
-- before this migration have no BIP-322 form (the columns stay NULL).
ALTER TABLE reserve_proofs ADD COLUMN bip322_challenge_vault TEXT;
-- The challenge address and its scriptPubKey (hex).
ALTER TABLE reserve_proofs ADD COLUMN bip322_challenge_address TEXT;
ALTER TABLE reserve_proofs ADD COLUMN bip322_challenge_script TEXT;
-- The unsigned to_sign PSBT (base64), and the one with every signature accepted so far.
ALTER TABLE reserve_proofs ADD COLUMN bip322_psbt TEXT;
ALTER TABLE reserve_proofs ADD COLUMN bip322_signed_psbt TEXT;
-- Guards against two writers, as signatures does for the BIP-127 form.
ALTER TABLE reserve_proofs ADD COLUMN bip322_signatures INTEGER NOT NULL DEFAULT 0 CHECK (bip322_signatures >= 0);
-- 'unsigned' until an officer submits a signature for it, then 'signing'; 'finalized' with
-- the proof (a form that was started must be complete before the proof finalizes).
ALTER TABLE reserve_proofs ADD COLUMN bip322_state TEXT CHECK (bip322_state IN ('unsigned', 'signing', 'finalized'));
-- The finalized to_sign transaction (hex), once finalized.
ALTER TABLE reserve_proofs ADD COLUMN bip322_final_tx TEXT;

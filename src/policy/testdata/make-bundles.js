// Test data only: regenerates bundle.message.json and bundle.dsse.json with npm's @sigstore/sign
// (`npm install @sigstore/sign @sigstore/bundle`, then
// `node make-bundles.js ecdsa-p256.key ecdsa-p256.pub manifest bundle`).
// Builds cosign-style sigstore bundles (v0.3) with @sigstore/sign and a key pair, offline:
// a message signature over a manifest's bytes, and a DSSE envelope of an in-toto statement
// naming the manifest's digest.
const crypto = require('crypto');
const fs = require('fs');
const { MessageSignatureBundleBuilder, DSSEBundleBuilder } = require('@sigstore/sign');

const [keyFile, pubFile, manifestFile, out] = process.argv.slice(2);
const key = crypto.createPrivateKey(fs.readFileSync(keyFile));
const publicKey = fs.readFileSync(pubFile, 'utf8');
const signer = {
  sign: async (data) => ({
    signature: crypto.sign('sha256', data, key),
    key: { $case: 'publicKey', publicKey, hint: 'wharf-test' },
  }),
};
const manifest = fs.readFileSync(manifestFile);
const digest = crypto.createHash('sha256').update(manifest).digest('hex');
(async () => {
  const message = await new MessageSignatureBundleBuilder({ signer, witnesses: [] })
    .create({ data: manifest });
  const statement = {
    _type: 'https://in-toto.io/Statement/v1',
    subject: [{ name: 'example.test/myorg/app', digest: { sha256: digest } }],
    predicateType: 'https://sigstore.dev/cosign/sign/v1',
    predicate: {},
  };
  const dsse = await new DSSEBundleBuilder({ signer, witnesses: [] })
    .create({ data: Buffer.from(JSON.stringify(statement)), type: 'application/vnd.in-toto+json' });
  const { bundleToJSON } = require('@sigstore/bundle');
  fs.writeFileSync(`${out}.message.json`, JSON.stringify(bundleToJSON(message), null, 1));
  fs.writeFileSync(`${out}.dsse.json`, JSON.stringify(bundleToJSON(dsse), null, 1));
})();

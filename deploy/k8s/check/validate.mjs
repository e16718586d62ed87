// Validates a stream of Kubernetes manifests (the output of `kustomize build`, on stdin or in
// files named on the command line) offline: built-in kinds against the Kubernetes OpenAPI
// schemas, custom resources (Strimzi, KEDA, CloudNativePG, Prometheus Operator) against their
// CRDs' schemas, as compiled by the kubernetes-models packages. A kind it cannot check is an
// error, so nothing slips through unvalidated. Prints one line per object; exits 1 on failure.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const PACKAGES = [
  [/^(v1|[a-z.]*k8s\.io\/v\w+|apps\/v1|batch\/v1|policy\/v1|autoscaling\/v2)$/, "kubernetes-models"],
  [/^kafka\.strimzi\.io\//, "@kubernetes-models/strimzi-kafka-operator"],
  [/^keda\.sh\//, "@kubernetes-models/keda"],
  [/^postgresql\.cnpg\.io\//, "@kubernetes-models/cloudnative-pg"],
  [/^monitoring\.coreos\.com\//, "@kubernetes-models/prometheus-operator"],
];

async function modelFor(apiVersion, kind) {
  const found = PACKAGES.find(([pattern]) => pattern.test(apiVersion));
  if (!found) throw new Error(`no schema known for ${apiVersion}`);
  const module = await import(`${found[1]}/${apiVersion}/${kind}`);
  return module[kind];
}

const sources = process.argv.length > 2 ? process.argv.slice(2) : ["/dev/stdin"];
let failed = 0;
let checked = 0;
for (const source of sources) {
  for (const doc of parseAllDocuments(readFileSync(source, "utf8"))) {
    const obj = doc.toJS();
    if (!obj) continue;
    const name = `${obj.kind}/${obj.metadata?.name} (${obj.apiVersion})`;
    try {
      const Model = await modelFor(obj.apiVersion, obj.kind);
      new Model(obj).validate();
      checked++;
      console.log(`ok     ${name}`);
    } catch (err) {
      failed++;
      console.log(`FAILED ${name}: ${err.message}`);
    }
  }
}
console.log(`${checked} valid, ${failed} invalid`);
process.exit(failed || checked === 0 ? 1 : 0);

//! Prometheus metrics (text format at `/metrics`). Label values that come from the
//! guest (pod, namespace) are truncated and restricted to a safe alphabet, so a guest
//! cannot inject text into the exposition or blow up cardinality with long strings.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub pod: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SuccessLabels {
    pub pod: String,
    pub namespace: String,
    pub measurement_match: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub pod: String,
    pub namespace: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub resource: String,
    pub reason: String,
}

/// One storage backend operation (`storage`): backend "local" or "etcd", op e.g.
/// "resource_get", "session_put".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub backend: String,
    pub op: String,
}

pub type StoreLatency = Family<StoreOpLabels, Histogram, fn() -> Histogram>;

fn store_histogram() -> Histogram {
    // 50 us .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub attempts: Family<PodLabels, Counter>,
    pub success: Family<SuccessLabels, Counter>,
    pub failure: Family<FailureLabels, Counter>,
    pub releases: Family<ResourceLabels, Counter>,
    pub denials: Family<DenialLabels, Counter>,
    /// Storage backend operation latency, seconds.
    pub store_latency: StoreLatency,
    /// Storage backend operations that failed (not counting "not found", "exists").
    pub store_errors: Family<StoreOpLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes a guest-supplied string safe as a label value.
pub fn label(v: &str) -> String {
    let s: String = v
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        .take(63)
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let attempts = Family::<PodLabels, Counter>::default();
        let success = Family::<SuccessLabels, Counter>::default();
        let failure = Family::<FailureLabels, Counter>::default();
        let releases = Family::<ResourceLabels, Counter>::default();
        let denials = Family::<DenialLabels, Counter>::default();
        // prometheus-client appends `_total` to counters itself.
        registry.register("coco_attestation_attempts", "Attestation attempts", attempts.clone());
        registry.register("coco_attestation_success", "Successful attestations", success.clone());
        registry.register("coco_attestation_failure", "Failed attestations by reason", failure.clone());
        registry.register("coco_kbs_resource_releases", "Resources released", releases.clone());
        registry.register("coco_kbs_resource_denials", "Resource requests denied by reason", denials.clone());
        let store_latency: StoreLatency = Family::new_with_constructor(store_histogram);
        let store_errors = Family::<StoreOpLabels, Counter>::default();
        registry.register(
            "cloak_kbs_store_op_seconds",
            "Storage backend operation latency",
            store_latency.clone(),
        );
        registry.register(
            "cloak_kbs_store_op_errors",
            "Storage backend operations that failed",
            store_errors.clone(),
        );
        Self { registry, attempts, success, failure, releases, denials, store_latency, store_errors }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

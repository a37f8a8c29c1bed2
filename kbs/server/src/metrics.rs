//! Prometheus metrics (text format at `/metrics`). Label values that come from the
//! guest (pod, namespace) are truncated and restricted to a safe alphabet, so a guest
//! cannot inject text into the exposition or blow up cardinality with long strings.
//!
//! Every series is a few hundred bytes the broker keeps for its lifetime, so the number
//! of label values is bounded too: at most `max_pods` pod/namespace pairs and
//! `max_resources` resource names get series of their own; later ones are counted
//! under the fixed value `other` (and in `cloak_kbs_metric_label_overflow_total`).
//! Requests that have not proven anything yet (no token, a bad token, a nonce that is
//! not the session's) are counted under `other` from the start, so unauthenticated
//! traffic cannot spend the budget.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

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

/// Which bounded label set refused a new value (`cloak_kbs_metric_label_overflow`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub label: String,
}

/// The label value of series whose real value is not kept: requests not yet
/// authenticated, and values past a family's cap.
pub const OTHER: &str = "other";

/// Default cap on distinct pod/namespace pairs with series of their own.
pub const DEFAULT_MAX_PODS: usize = 1000;
/// Default cap on distinct resource names with series of their own.
pub const DEFAULT_MAX_RESOURCES: usize = 1000;

/// How many distinct label values the metrics keep (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricLimits {
    pub max_pods: usize,
    pub max_resources: usize,
}

impl Default for MetricLimits {
    fn default() -> Self {
        Self { max_pods: DEFAULT_MAX_PODS, max_resources: DEFAULT_MAX_RESOURCES }
    }
}

/// The first `cap` distinct values admitted; membership is all it remembers.
struct Budget<K> {
    admitted: Mutex<HashSet<K>>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    fn new(cap: usize) -> Self {
        Self { admitted: Mutex::new(HashSet::new()), cap }
    }

    fn admit(&self, k: &K) -> bool {
        let mut set = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        if set.contains(k) {
            return true;
        }
        if set.len() < self.cap {
            set.insert(k.clone());
            return true;
        }
        false
    }
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
    /// Label values refused because their family's cap was reached.
    overflow: Family<OverflowLabels, Counter>,
    pods: Budget<(String, String)>,
    resources: Budget<String>,
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
        Self::with_limits(MetricLimits::default())
    }

    pub fn with_limits(limits: MetricLimits) -> Self {
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
        let overflow = Family::<OverflowLabels, Counter>::default();
        registry.register(
            "cloak_kbs_metric_label_overflow",
            "Label values counted under \"other\" because their family's cap was reached",
            overflow.clone(),
        );
        Self {
            registry,
            attempts,
            success,
            failure,
            releases,
            denials,
            store_latency,
            store_errors,
            overflow,
            pods: Budget::new(limits.max_pods),
            resources: Budget::new(limits.max_resources),
        }
    }

    /// The labels for an attestation by `pod` in `namespace` (already [`label`]-safe):
    /// their own while the pod budget has room or they already have series, `other`
    /// after that.
    pub fn pod_labels(&self, pod: &str, namespace: &str) -> PodLabels {
        if self.pods.admit(&(pod.to_string(), namespace.to_string())) {
            return PodLabels { pod: pod.into(), namespace: namespace.into() };
        }
        self.overflow.get_or_create(&OverflowLabels { label: "pod".into() }).inc();
        Self::other_pod()
    }

    /// The labels of an attestation whose pod is not trusted even as a label.
    pub fn other_pod() -> PodLabels {
        PodLabels { pod: OTHER.into(), namespace: OTHER.into() }
    }

    /// The `resource` label for a validated resource path asked for with a verified
    /// token: its own name while the resource budget has room, `other` after that.
    pub fn resource_label(&self, resource: &str) -> String {
        if self.resources.admit(&resource.to_string()) {
            return resource.into();
        }
        self.overflow.get_or_create(&OverflowLabels { label: "resource".into() }).inc();
        OTHER.into()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn label_values_beyond_the_cap_share_other() {
        let m = Metrics::with_limits(MetricLimits { max_pods: 2, max_resources: 1 });
        assert_eq!(m.pod_labels("a", "ns").pod, "a");
        assert_eq!(m.pod_labels("b", "ns").pod, "b");
        assert_eq!(m.pod_labels("c", "ns"), Metrics::other_pod());
        // Pairs already admitted keep their series.
        assert_eq!(m.pod_labels("a", "ns").pod, "a");
        assert_eq!(m.resource_label("default/key/1"), "default/key/1");
        assert_eq!(m.resource_label("default/key/2"), OTHER);
        let text = m.encode();
        assert!(text.contains(r#"cloak_kbs_metric_label_overflow_total{label="pod"} 1"#), "{text}");
        assert!(text.contains(r#"cloak_kbs_metric_label_overflow_total{label="resource"} 1"#), "{text}");
    }
}

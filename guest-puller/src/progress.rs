//! Progress events: one bar per layer on a terminal, JSON lines for an agent
//! (`--progress=json`), or nothing (`--quiet`).

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

/// One progress event.
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    /// Layer index in the manifest, if the event is about a layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// Layer blob digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<&'a str>,
    /// `resolve`, `keys`, `fetch`, `cached`, `verified`, `assemble`, `done`, `failed`.
    pub phase: &'a str,
    /// Bytes done in this phase.
    pub bytes: u64,
    /// Total bytes of this phase, if known.
    pub total: u64,
}

/// Receives progress events; must be cheap (called per chunk).
pub trait ProgressSink: Send + Sync {
    /// Handle one event.
    fn event(&self, ev: &Event<'_>);
}

/// Discards events.
#[derive(Debug, Default)]
pub struct Quiet;

impl ProgressSink for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// JSON lines on stderr; `fetch` events are thinned to about one per MiB.
#[derive(Debug, Default)]
pub struct JsonLines {
    last: Mutex<Vec<u64>>,
}

impl ProgressSink for JsonLines {
    fn event(&self, ev: &Event<'_>) {
        if ev.phase == "fetch" {
            if let (Some(i), Ok(mut last)) = (ev.layer, self.last.lock()) {
                if last.len() <= i {
                    last.resize(i + 1, 0);
                }
                if ev.bytes < ev.total && ev.bytes.saturating_sub(last[i]) < (1 << 20) {
                    return;
                }
                last[i] = ev.bytes;
            }
        }
        if let Ok(line) = serde_json::to_string(ev) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
    }
}

/// indicatif bars, one per layer.
pub struct Bars {
    multi: indicatif::MultiProgress,
    bars: Mutex<Vec<Option<indicatif::ProgressBar>>>,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bars")
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self { multi: indicatif::MultiProgress::new(), bars: Mutex::new(Vec::new()) }
    }
}

impl ProgressSink for Bars {
    fn event(&self, ev: &Event<'_>) {
        let Some(i) = ev.layer else { return };
        let Ok(mut bars) = self.bars.lock() else { return };
        if bars.len() <= i {
            bars.resize(i + 1, None);
        }
        let bar = bars[i].get_or_insert_with(|| {
            let b = self.multi.add(indicatif::ProgressBar::new(ev.total));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix:>12} {msg:>9} [{bar:30}] {bytes}/{total_bytes}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            let short = ev
                .digest
                .map(|d| d.trim_start_matches("sha256:").chars().take(12).collect::<String>())
                .unwrap_or_default();
            b.set_prefix(short);
            b
        });
        bar.set_message(ev.phase.to_string());
        if ev.total > 0 {
            bar.set_length(ev.total);
        }
        bar.set_position(ev.bytes);
        if matches!(ev.phase, "verified" | "cached" | "failed") {
            bar.finish();
        }
    }
}

//! What `GET /metrics` reports, in Prometheus' text format: requests by endpoint and status
//! (errors are the 4xx and 5xx ones), request latency by endpoint, the size of each model batch,
//! and the news in the catalogue.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

/// Latency buckets: 0.25 ms to about 4 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    batch_size: Histogram,
    news: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let news = Gauge::default();
        let mut registry = Registry::with_prefix("mtrec");
        registry.register("requests", "HTTP requests by endpoint and status code", requests.clone());
        registry.register("request_seconds", "HTTP request latency, arrival to response", latency.clone());
        registry.register("batch_size", "Requests answered by one model call", batch_size.clone());
        registry.register("catalogue_news", "News items the service can rank", news.clone());
        Metrics { registry, requests, latency, batch_size, news }
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.into(), status }).inc();
        self.latency.get_or_create(&EndpointLabel { endpoint: endpoint.into() }).observe(seconds);
    }

    pub fn batch(&self, size: usize) {
        self.batch_size.observe(size as f64);
    }

    pub fn set_news(&self, news: usize) {
        self.news.set(news as i64);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_latencies_and_batches_appear_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.request("/v1/rank", 200, 0.001);
        metrics.request("/v1/rank", 200, 0.003);
        metrics.request("/v1/rank", 400, 0.0002);
        metrics.batch(3);
        metrics.set_news(42);
        let text = metrics.encode();
        assert!(text.contains(r#"mtrec_requests_total{endpoint="/v1/rank",status="200"} 2"#), "{text}");
        assert!(text.contains(r#"mtrec_requests_total{endpoint="/v1/rank",status="400"} 1"#), "{text}");
        assert!(text.contains(r#"mtrec_request_seconds_count{endpoint="/v1/rank"} 3"#), "{text}");
        assert!(text.contains("mtrec_batch_size_count 1"), "{text}");
        assert!(text.contains("mtrec_catalogue_news 42"), "{text}");
    }
}

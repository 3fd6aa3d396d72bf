//! Trace context propagation without threading a parameter through every store
//! function: the HTTP layer (or the consumer loop, for events caused by events)
//! runs the request inside [`with_traceparent`], and [`crate::outbox::enqueue`]
//! picks the value up from the task-local.

use std::future::Future;

tokio::task_local! {
    static TRACEPARENT: Option<String>;
}

/// Runs `fut` with `traceparent` as the current W3C trace context.
pub async fn with_traceparent<F: Future>(traceparent: Option<String>, fut: F) -> F::Output {
    TRACEPARENT.scope(traceparent, fut).await
}

/// The trace context of the current task, if one was set with [`with_traceparent`].
pub fn current_traceparent() -> Option<String> {
    TRACEPARENT.try_with(|t| t.clone()).ok().flatten()
}

/// Minimal validation of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), so a
/// garbage header from outside is dropped rather than propagated.
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scoped_value_is_visible_inside_only() {
        assert_eq!(current_traceparent(), None);
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string();
        let seen = with_traceparent(Some(tp.clone()), async { current_traceparent() }).await;
        assert_eq!(seen, Some(tp.clone()));
        assert!(is_valid_traceparent(&tp));
        assert!(!is_valid_traceparent("nope"));
    }
}

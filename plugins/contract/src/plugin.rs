//! How plugins are stacked: the boxed service type and the [`Plugin`] trait.

use tower::Layer;
use tower::util::BoxCloneSyncService;

use crate::{McpRequest, McpResponse, ProxyError};

/// The type-erased service every layer wraps and returns.
pub type BoxMcpService = BoxCloneSyncService<McpRequest, McpResponse, ProxyError>;

/// A configured plugin: something that can wrap the rest of the stack.
///
/// The engine calls [`Plugin::wrap`] innermost-first, so the first plugin in
/// the configured order ends up outermost (it sees a request first and its
/// response last). Implement it through [`LayerPlugin`] for any
/// [`tower::Layer`].
pub trait Plugin: Send + Sync + 'static {
    /// The name used in configuration and logs.
    fn name(&self) -> &str;

    /// Wraps `inner` with this plugin's layer.
    fn wrap(&self, inner: BoxMcpService) -> BoxMcpService;
}

/// Adapts any cloneable [`tower::Layer`] over [`BoxMcpService`] into a
/// [`Plugin`].
#[derive(Debug, Clone)]
pub struct LayerPlugin<L> {
    name: String,
    layer: L,
}

impl<L> LayerPlugin<L> {
    /// Names a layer.
    pub fn new(name: impl Into<String>, layer: L) -> Self {
        Self {
            name: name.into(),
            layer,
        }
    }
}

impl<L> Plugin for LayerPlugin<L>
where
    L: Layer<BoxMcpService> + Send + Sync + 'static,
    L::Service: tower::Service<McpRequest, Response = McpResponse, Error = ProxyError>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<McpRequest>>::Future: Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, inner: BoxMcpService) -> BoxMcpService {
        BoxMcpService::new(self.layer.layer(inner))
    }
}

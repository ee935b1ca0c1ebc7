//! Builds the plugin list from `[plugins]`. Each session folds the list
//! around its forwarder, innermost last, so the first name in
//! `plugins.order` is the outermost layer.

use std::sync::Arc;

use mcp_meter_call_log::CallLogLayer;
use mcp_meter_plugin::{LayerPlugin, Plugin};

use crate::config::PluginsConfig;

/// The configured plugins, outermost first. Names were checked by
/// [`crate::config::validate`]; an unknown one here is skipped with a warning.
pub fn plugins_from_config(config: &PluginsConfig) -> Vec<Arc<dyn Plugin>> {
    config
        .order
        .iter()
        .filter_map(|name| -> Option<Arc<dyn Plugin>> {
            match name.as_str() {
                "call_log" => Some(Arc::new(LayerPlugin::new("call_log", CallLogLayer::new()))),
                other => {
                    tracing::warn!(plugin = other, "unknown plugin skipped");
                    None
                }
            }
        })
        .collect()
}

//! Builds the plugin list from `[plugins]`. Each session folds the list
//! around its forwarder, innermost last, so the first name in
//! `plugins.order` is the outermost layer.

use std::sync::Arc;

use mcp_meter_auth::AuthLayer;
use mcp_meter_call_log::CallLogLayer;
use mcp_meter_plugin::{LayerPlugin, Plugin};
use mcp_meter_rate_limit::RateLimitLayer;

use super::StartError;
use super::services::PluginServices;
use crate::config::Config;

/// The configured plugins, outermost first. Names were checked by
/// [`crate::config::validate`]; a plugin whose service was not started is an
/// error, never silently skipped (a proxy without its auth layer would let
/// every call through).
pub fn plugins_from_config(
    config: &Config,
    services: &PluginServices,
) -> Result<Vec<Arc<dyn Plugin>>, StartError> {
    config
        .plugin_order()
        .iter()
        .map(|name| -> Result<Arc<dyn Plugin>, StartError> {
            let missing = || StartError::PluginNotStarted(name.clone());
            Ok(match name.as_str() {
                "call_log" => Arc::new(LayerPlugin::new("call_log", CallLogLayer::new())),
                "auth" => {
                    let authenticator = services.authenticator.clone().ok_or_else(missing)?;
                    Arc::new(LayerPlugin::new("auth", AuthLayer::new(authenticator)))
                }
                "usage_recorder" => {
                    let layer = services.recorder.clone().ok_or_else(missing)?;
                    Arc::new(LayerPlugin::new("usage_recorder", layer))
                }
                "rate_limit" => {
                    let limits = config.rate_limits.clone().unwrap_or_default();
                    let layer = RateLimitLayer::new(&limits)
                        .map_err(|e| StartError::PluginConfig(e.to_string()))?;
                    Arc::new(LayerPlugin::new("rate_limit", layer))
                }
                "billing" => {
                    let layer = services.billing.clone().ok_or_else(missing)?;
                    Arc::new(LayerPlugin::new("billing", layer))
                }
                _ => return Err(StartError::UnknownPlugin(name.clone())),
            })
        })
        .collect()
}

//! What an instance's kit adds to it after creation, through the lifecycle's [`AppPolicy`]:
//! the kit's secrets at every boot, and the kit's name and egress hints in the view. The kit is
//! kept in the instance's application data under two keys, as configurations have always
//! stored it.

use async_trait::async_trait;

use crate::kits::{KitBinding, SelectError};
use crate::lifecycle::spec::{AppData, InstanceSpec};
use crate::lifecycle::{AppPolicy, SelectionError};
use crate::secrets::SecretStore;

const KIT: &str = "kit";
const KIT_CONFIG: &str = "kit_config";

/// The kit's name an instance was created from.
pub fn kit_name(app: &AppData) -> Option<String> {
    app.get(KIT).and_then(|v| v.as_str()).map(str::to_owned)
}

/// What the instance keeps of its kit. A binding that no longer parses counts as none.
pub fn kit_binding(app: &AppData) -> Option<KitBinding> {
    app.get(KIT_CONFIG)
        .filter(|v| !v.is_null())
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Records the kit an instance is created from.
pub fn bind_kit(app: &mut AppData, name: &str, binding: Option<&KitBinding>) {
    app.insert(KIT.to_owned(), serde_json::Value::from(name));
    if let Some(binding) = binding.and_then(|b| serde_json::to_value(b).ok()) {
        app.insert(KIT_CONFIG.to_owned(), binding);
    }
}

/// The daemon's policy: instances get the secrets they name plus their kit's.
#[derive(Debug)]
pub struct KitPolicy {
    secrets: SecretStore,
}

impl KitPolicy {
    /// The policy, reading which secrets exist from `secrets`.
    pub fn new(secrets: SecretStore) -> KitPolicy {
        KitPolicy { secrets }
    }
}

#[async_trait]
impl AppPolicy for KitPolicy {
    async fn secrets(&self, spec: &InstanceSpec) -> Result<Vec<String>, SelectionError> {
        let Some(kit) = kit_binding(&spec.app) else {
            return Ok(spec.secrets.clone());
        };
        crate::kits::preset::secret_selection(&self.secrets, &kit, &spec.secrets)
            .await
            .map_err(|e| match e {
                SelectError::Store(e) => SelectionError::Store(e),
                SelectError::Preset(e) => SelectionError::Refused {
                    reason: e.to_string(),
                    hint: Some(e.hint()),
                },
            })
    }

    fn present(&self, app: &AppData, view: &mut aegis_proto::api::Instance) {
        view.kit = kit_name(app);
        view.egress_hints = kit_binding(app).map(|k| k.egress).unwrap_or_default();
    }
}

//! Running CNI plugins as the spec (1.x) asks of a runtime: the first network
//! configuration in the conf dir (by file name), each plugin of the list executed from
//! the bin dir with `CNI_*` variables and its configuration (with `name`, `cniVersion`
//! and the previous result) on stdin; DEL in reverse order with the cached ADD result.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// CNI failures.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network configuration in the conf dir.
    #[error("no CNI network configuration in {0}")]
    NoConfig(String),
    /// A configuration file could not be read or parsed.
    #[error("CNI configuration {0}: {1}")]
    BadConfig(String, String),
    /// A plugin binary is not in the bin dir.
    #[error("CNI plugin {0:?} not found in {1}")]
    PluginNotFound(String, String),
    /// A plugin ran and failed (its error object's code and message).
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        command: &'static str,
        /// The CNI error code (0 when the plugin printed no error object).
        code: u64,
        /// Its message and details, or its stderr.
        msg: String,
    },
    /// Starting a plugin or talking to it failed.
    #[error("running CNI plugin {0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// One attachment of a sandbox to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The sandbox ID (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The network namespace path (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The interface name in the namespace (`CNI_IFNAME`).
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K8S_POD_NAME`, ...).
    pub args: Vec<(String, String)>,
}

/// The network a sandbox is attached to.
pub trait Network: Send + Sync + std::fmt::Debug {
    /// ADD: returns the final result.
    fn add(&self, attachment: &Attachment) -> Result<Value, CniError>;
    /// DEL, with the cached ADD result when there is one.
    fn del(&self, attachment: &Attachment, prev: Option<&Value>) -> Result<(), CniError>;
    /// Whether a configuration is present (the NetworkReady condition).
    fn ready(&self) -> Result<(), CniError>;
}

/// Executes plugins from `bin_dir` per the first configuration in `conf_dir`.
#[derive(Debug, Clone)]
pub struct CniExec {
    /// Configuration directory.
    pub conf_dir: PathBuf,
    /// Plugin binary directory.
    pub bin_dir: PathBuf,
}

impl CniExec {
    /// Loads the first `.conflist` (or single-plugin `.conf`/`.json`) by file name.
    fn load(&self) -> Result<Value, CniError> {
        let dir = self.conf_dir.display().to_string();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(|_| CniError::NoConfig(dir.clone()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .collect();
        files.sort();
        let path = files.first().ok_or(CniError::NoConfig(dir))?;
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| CniError::BadConfig(name.clone(), e.to_string()))?;
        let conf: Value = serde_json::from_slice(&bytes)
            .map_err(|e| CniError::BadConfig(name.clone(), e.to_string()))?;
        let list = if conf.get("plugins").is_some() {
            conf
        } else {
            serde_json::json!({
                "cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]
            })
        };
        if list["plugins"].as_array().is_none_or(|p| p.is_empty()) || !list["name"].is_string() {
            return Err(CniError::BadConfig(name, "needs a name and plugins".into()));
        }
        Ok(list)
    }

    fn exec(
        &self,
        command: &'static str,
        list: &Value,
        plugin: &Value,
        attachment: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        if kind.is_empty() || kind.contains('/') {
            return Err(CniError::BadConfig(
                self.conf_dir.display().to_string(),
                format!("bad plugin type {kind:?}"),
            ));
        }
        let binary = self.bin_dir.join(&kind);
        if !binary.exists() {
            return Err(CniError::PluginNotFound(
                kind,
                self.bin_dir.display().to_string(),
            ));
        }
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let args: Vec<String> = attachment
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let io = |e| CniError::Io(kind.clone(), e);
        let mut child = Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", &attachment.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes()).map_err(io)?;
        }
        let out = child.wait_with_output().map_err(io)?;
        let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = match result["msg"].as_str() {
                Some(msg) => format!("{msg} {}", result["details"].as_str().unwrap_or_default()),
                None => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            };
            return Err(CniError::Plugin {
                plugin: kind,
                command,
                code: result["code"].as_u64().unwrap_or(0),
                msg: msg.trim().to_string(),
            });
        }
        Ok(result)
    }
}

impl Network for CniExec {
    fn add(&self, attachment: &Attachment) -> Result<Value, CniError> {
        let list = self.load()?;
        let mut prev: Option<Value> = None;
        for plugin in list["plugins"].as_array().into_iter().flatten() {
            let result = self.exec("ADD", &list, plugin, attachment, prev.as_ref())?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    fn del(&self, attachment: &Attachment, prev: Option<&Value>) -> Result<(), CniError> {
        let list = self.load()?;
        let mut first_error = None;
        for plugin in list["plugins"].as_array().into_iter().flatten().rev() {
            if let Err(e) = self.exec("DEL", &list, plugin, attachment, prev) {
                tracing::warn!(container = %attachment.container_id, "CNI DEL: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn ready(&self) -> Result<(), CniError> {
        self.load().map(|_| ())
    }
}

/// The IPv4 addresses (without prefix length) of a CNI result, first one first.
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .map(str::to_string)
        .collect()
}

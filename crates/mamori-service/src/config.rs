//! Configuration: `DIR/mamori.toml`, every key with a default (see
//! docs/configuration.md), overridden by environment variables
//! `MAMORI_<SECTION>_<KEY>` (secrets also as `..._FILE`), overridden by
//! command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration: one field per section of `mamori.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the HTTPS listener.
    pub server: ServerSection,
    /// `[tls]`: its certificate and key.
    pub tls: TlsSection,
    /// `[database]`: SQLite or PostgreSQL.
    pub database: DatabaseSection,
    /// `[auth]`: logins, tokens, lockout.
    pub auth: AuthSection,
    /// `[audit]`: checkpoints, witnesses, self-verification.
    pub audit: AuditSection,
    /// `[institution]`: who runs this server.
    pub institution: InstitutionSection,
    /// `[syslog]`: streaming the audit log to a collector.
    pub syslog: SyslogSection,
    /// `[notify]`: where announcements are delivered.
    pub notify: NotifySection,
    /// `[exchange]`: AS2 exchange with partners.
    pub exchange: ExchangeSection,
    /// `[snapshot]`: offline reference snapshots.
    pub snapshot: SnapshotSection,
    /// `[maintenance]`: remote maintenance.
    pub maintenance: MaintenanceSection,
    /// `[compliance]`
    pub compliance: ComplianceSection,
    /// `[export]`: FHIR Bulk Data export.
    pub export: ExportSection,
    /// `[apps]`: third-party apps (SMART App Launch).
    pub apps: AppsSection,
    /// `[fhir]`: FHIR packages and validation against their profiles.
    pub fhir: FhirSection,
    /// `[log]`: the server's own log.
    pub log: LogSection,
}

/// `[export]`: FHIR Bulk Data export (`$export`, docs/fhir.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Hours an export's output is kept after it finished.
    pub retention_hours: u64,
    /// Exports one user may have queued or running at once.
    pub max_active_per_user: u64,
    /// Resources per NDJSON output file.
    pub resources_per_file: u64,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection { retention_hours: 24, max_active_per_user: 2, resources_per_file: 10_000 }
    }
}

/// `[apps]`: third-party apps (SMART App Launch, docs/smart.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsSection {
    /// Minutes an app's access token works.
    pub access_token_minutes: u64,
    /// Hours an `online_access` refresh token works.
    pub online_refresh_hours: u64,
    /// Days an `offline_access` refresh token works.
    pub offline_refresh_days: u64,
}

impl Default for AppsSection {
    fn default() -> Self {
        AppsSection { access_token_minutes: 60, online_refresh_hours: 12, offline_refresh_days: 30 }
    }
}

/// `[fhir]`: FHIR packages (JP Core, JP-CLINS, ...) and what a write does
/// with a resource that does not conform to a profile (docs/fhir-jp.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSection {
    /// Packages (NPM `.tgz` files or folders) loaded at start, besides
    /// those `mamori packages add` installed in `DATA/packages/`.
    pub packages: Vec<PathBuf>,
    /// What a write does with a resource that does not conform to a
    /// profile it claims (`meta.profile`) or that `required` names:
    /// `off`, `warn` (stored, the findings answered and audited) or
    /// `enforce` (refused with 422).
    pub validation: String,
    /// The policy for particular types, overriding `validation`.
    pub type_validation: std::collections::BTreeMap<String, String>,
    /// Profiles every resource of a type must conform to (type → URL).
    pub required: std::collections::BTreeMap<String, String>,
}

impl Default for FhirSection {
    fn default() -> Self {
        FhirSection {
            packages: Vec::new(),
            validation: "warn".into(),
            type_validation: Default::default(),
            required: Default::default(),
        }
    }
}

/// `[compliance]`: the thresholds of the compliance report
/// (docs/compliance.md): what the hospital's own rules call overdue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceSection {
    /// A drill (or a real declaration) is expected at least this often (EM-B7).
    pub drill_interval_days: i64,
    /// A break-glass use is to be reviewed within this many days (EM-B8).
    pub break_glass_review_days: i64,
    /// An active maintenance person unused this long is flagged (EX-B1e).
    pub maintenance_unused_days: i64,
    /// Audit events not yet forwarded to syslog above which the forwarding
    /// needs attention (GL-AUDIT).
    pub syslog_max_lag: u64,
    /// A snapshot older than this many hours needs attention when no
    /// schedule is set (GL-BACKUP); with a schedule, twice its interval.
    pub snapshot_max_age_hours: i64,
    /// A snapshot is expected to have been verified within this many days.
    pub snapshot_verify_days: i64,
    /// A TrueType (.ttf, glyf outlines) font with Japanese glyphs for PDF
    /// reports; empty: the first of the usual Debian paths that exists.
    pub pdf_font: String,
}

impl Default for ComplianceSection {
    fn default() -> Self {
        ComplianceSection {
            drill_interval_days: 365,
            break_glass_review_days: 7,
            maintenance_unused_days: 90,
            syslog_max_lag: 1000,
            snapshot_max_age_hours: 168,
            snapshot_verify_days: 90,
            pdf_font: String::new(),
        }
    }
}

/// Remote maintenance (docs/maintenance.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSection {
    /// Listen address of the maintenance listener (client certificates from
    /// mamori's maintenance CA); empty: no remote maintenance.
    pub listen: String,
    /// Approvals a maintenance window needs (1 or 2), not counting the requester.
    pub approvals: u8,
    /// Longest window, in hours.
    pub max_window_hours: i64,
    /// A closed window must be reviewed within this many hours.
    pub review_due_hours: i64,
    /// Validity of maintenance client certificates, in days.
    pub cert_days: u32,
    /// Connections the maintenance listener holds at once.
    pub max_connections: usize,
}

impl Default for MaintenanceSection {
    fn default() -> Self {
        MaintenanceSection {
            listen: String::new(),
            approvals: 1,
            max_window_hours: 12,
            review_due_hours: 72,
            cert_days: 90,
            max_connections: 16,
        }
    }
}

/// Offline reference snapshots (GL-BACKUP); see docs/snapshots.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    /// Where snapshot files are written (relative: inside the data
    /// directory); point it at removable or write-once media.
    pub dir: String,
    /// Take a snapshot automatically this often (hours); 0: only on request.
    pub every_hours: u64,
    /// Snapshot files kept in `dir` (older ones are deleted).
    pub keep: usize,
    /// Patients with any change in this many days are included...
    pub activity_days: i64,
    /// ...with these resource types (current versions)...
    pub types: Vec<String>,
    /// ...of which these are limited to the last `recent_days`.
    pub recent_types: Vec<String>,
    /// Days of history kept of `recent_types`.
    pub recent_days: i64,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection {
            dir: "snapshots".into(),
            every_hours: 0,
            keep: 7,
            activity_days: 30,
            types: [
                "Patient",
                "AllergyIntolerance",
                "Condition",
                "MedicationRequest",
                "MedicationStatement",
                "Observation",
                "DocumentReference",
                "Encounter",
                "Procedure",
                "Immunization",
                "CarePlan",
                "Flag",
                "Consent",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            recent_types: ["Observation", "DocumentReference", "Encounter"].iter().map(|s| s.to_string()).collect(),
            recent_days: 30,
        }
    }
}

/// Exchange with partner institutions over AS2 (guideline 6.10).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeSection {
    /// This institution's AS2 identifier; empty: the institution id, or "mamori".
    pub as2_id: String,
    /// Listen address of the AS2 endpoint (mutual TLS); empty: no inbound AS2.
    pub listen: String,
    /// The URL partners post to (for asynchronous receipts and onboarding);
    /// empty: https://localhost:<port>/as2 for a loopback listener.
    pub public_url: String,
    /// Host names and IP addresses in the exchange TLS certificate made at
    /// first start.
    pub tls_names: Vec<String>,
    /// Largest accepted AS2 message, in bytes.
    pub max_message_bytes: usize,
    /// Retry schedule of the outbox: first delay, doubling up to the
    /// maximum, for at most this many attempts.
    pub retry_initial_seconds: u64,
    /// The longest delay between attempts, in seconds.
    pub retry_max_seconds: u64,
    /// Attempts before a message fails for good.
    pub max_attempts: u32,
    /// Timeout of one delivery attempt (connect, send, receipt).
    pub send_timeout_seconds: u64,
    /// Warn this many days before a partner's or our certificate expires.
    pub cert_expiry_warn_days: i64,
    /// Connections the AS2 listener holds at once.
    pub max_connections: usize,
}

impl Default for ExchangeSection {
    fn default() -> Self {
        ExchangeSection {
            as2_id: String::new(),
            listen: String::new(),
            public_url: String::new(),
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            max_message_bytes: 64 * 1024 * 1024,
            retry_initial_seconds: 30,
            retry_max_seconds: 3600,
            max_attempts: 10,
            send_timeout_seconds: 120,
            cert_expiry_warn_days: 30,
            max_connections: 128,
        }
    }
}

/// Where announcements (declarations, break-glass, emergency-account use,
/// alerts) are delivered besides the UI banner and the audit log (which
/// also streams to syslog).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySection {
    /// Webhooks each announcement is posted to.
    pub webhooks: Vec<Webhook>,
}

/// One webhook announcements are posted to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// A short name, used in delivery records.
    pub name: String,
    /// https:// URL receiving a JSON POST per announcement.
    pub url: String,
    /// File holding a shared secret: each POST carries
    /// `X-Mamori-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default)]
    pub secret_file: String,
    /// CA certificate (PEM) to trust for this URL; empty: the system roots.
    #[serde(default)]
    pub ca: String,
}

/// Streaming the audit log to an IHE ATNA / RFC 5425 collector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogSection {
    /// host:port of the collector (TLS, RFC 5425 octet counting); empty
    /// disables streaming.
    pub collector: String,
    /// CA certificate (PEM) that issued the collector's certificate.
    pub ca: String,
    /// Client certificate and key (PEM) for mutual TLS, if the collector
    /// requires one (ATNA does).
    pub client_cert: String,
    /// The private key (PEM) of `client_cert`.
    pub client_key: String,
    /// HOSTNAME field of the messages; empty: the institution id or "mamori".
    pub hostname: String,
    /// Events re-sent after a reconnect (RFC 5425 has no acknowledgements;
    /// collectors drop duplicates by the index in the structured data).
    pub resend_window: u64,
}

impl Default for SyslogSection {
    fn default() -> Self {
        SyslogSection {
            collector: String::new(),
            ca: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
            hostname: String::new(),
            resend_window: 1000,
        }
    }
}

/// `[server]`: the HTTPS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// HTTPS listen address.
    pub listen: String,
    /// Base URL used in links (Bundle.link, Location); empty: derived from listen.
    pub public_url: String,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// Seconds to let in-flight requests finish at shutdown.
    pub shutdown_grace_seconds: u64,
    /// Connections the HTTPS listener holds at once (the AS2 and
    /// maintenance listeners have their own caps).
    pub max_connections: usize,
    /// Connections one source address holds at once, on each listener.
    pub max_connections_per_source: usize,
    /// Seconds to receive a request's header (HTTP/1.1) after the
    /// connection opens or the previous response ends.
    pub header_timeout_seconds: u64,
    /// Seconds after which a connection with no traffic and no request in
    /// progress is closed.
    pub idle_timeout_seconds: u64,
    /// Seconds to receive a whole request body.
    pub body_timeout_seconds: u64,
}

/// `[tls]`: the HTTPS listener's certificate and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain (relative paths are inside the data directory).
    pub cert: String,
    /// PEM private key (mode 0600).
    pub key: String,
    /// "1.2" or "1.3".
    pub min_version: String,
}

/// `[database]`: where the data is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// Empty: the embedded SQLite database `DIR/mamori.db`.
    pub url: String,
    /// SQLite durability: "full" (survives power loss) or "normal".
    pub synchronous: String,
    /// Read connections.
    pub readers: usize,
    /// A PostgreSQL standby that answers searches (as many connections
    /// as `readers`); empty: searches read the primary. Their audit
    /// events are written on the primary before the answer.
    pub replica_url: String,
}

/// `[auth]`: logins, tokens, lockout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Lifetime of a login token, in minutes.
    pub login_ttl_minutes: i64,
    /// Default lifetime of an API token, in hours.
    pub api_token_ttl_hours: i64,
    /// Failed logins before the account is locked.
    pub max_failed_logins: u32,
    /// How long a locked account stays locked, in minutes.
    pub lockout_minutes: i64,
    /// Failed logins one source address may make within
    /// `source_window_minutes` before each further one makes it wait.
    pub source_free_failures: u32,
    /// The window in which a source's failed logins count, in minutes.
    pub source_window_minutes: u64,
    /// The longest wait a source is given, in minutes.
    pub source_max_block_minutes: u64,
}

/// `[audit]`: the audit log's checkpoints, witnesses and self-verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// The checkpoint origin line: this log's unique name.
    pub origin: String,
    /// Sign a checkpoint after this many events...
    pub checkpoint_every_events: u64,
    /// ...or after this many seconds with new events.
    pub checkpoint_every_seconds: u64,
    /// Witnesses whose cosignatures are accepted: C2SP vkeys (type 0x04).
    pub witnesses: Vec<String>,
    /// The server verifies its own audit log this often (minutes) and
    /// raises a possible-emergency alert if it fails.
    pub self_verify_minutes: u64,
    /// At each self-verification, the stored records bound by a random
    /// window of this many events are checked against their digests (0:
    /// no sample check).
    pub record_sample_events: u64,
}

/// `[institution]`: who runs this server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstitutionSection {
    /// The 10-digit medical institution code (医療機関コード), if any.
    pub id: String,
    /// The institution's name (in its certificates and snapshots).
    pub name: String,
    /// Local time zone as minutes east of UTC (540 = JST), for per-day
    /// reports and document dates.
    pub utc_offset_minutes: i64,
    /// This node's short code in provisional patient ids
    /// (`T-<date>-<node>-<n>`); standalone nodes use their own.
    pub node: String,
    /// Number new patients in the institution's patient-id system
    /// (`urn:oid:1.2.392.100495.20.3.51.1<id>`): a Patient created without
    /// an identifier in that system gets the next free number. Off when
    /// the hospital's registration system assigns the numbers.
    pub number_patients: bool,
    /// The digits of an assigned patient number (zero-padded), 4 to 16.
    pub patient_number_digits: usize,
}

/// `[log]`: the server's own log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// tracing filter, e.g. "info" or "mamori=debug,info".
    pub level: String,
    /// "text" or "json".
    pub format: String,
    /// The access log: "off", "summary" (a line per `summary_seconds`
    /// plus every server error and slow request), "sampled" (one request
    /// in `sample`, plus errors and slow ones) or "all".
    pub access: String,
    /// With "sampled": one request in this many.
    pub sample: u64,
    /// A request slower than this (milliseconds) is logged by itself.
    pub slow_ms: u64,
    /// With "summary": seconds per summary line.
    pub summary_seconds: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8443".into(),
            public_url: String::new(),
            body_limit_bytes: 16 * 1024 * 1024,
            shutdown_grace_seconds: 30,
            max_connections: 512,
            max_connections_per_source: 128,
            header_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            body_timeout_seconds: 120,
        }
    }
}
impl Default for TlsSection {
    fn default() -> Self {
        TlsSection { cert: "tls/cert.pem".into(), key: "tls/key.pem".into(), min_version: "1.2".into() }
    }
}
impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection { url: String::new(), synchronous: "full".into(), readers: 4, replica_url: String::new() }
    }
}
impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            login_ttl_minutes: 480,
            api_token_ttl_hours: 24 * 90,
            max_failed_logins: 5,
            lockout_minutes: 15,
            source_free_failures: 10,
            source_window_minutes: 10,
            source_max_block_minutes: 15,
        }
    }
}
impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            origin: "mamori.local/audit".into(),
            checkpoint_every_events: 1000,
            checkpoint_every_seconds: 60,
            witnesses: Vec::new(),
            self_verify_minutes: 15,
            record_sample_events: 20_000,
        }
    }
}
impl Default for InstitutionSection {
    fn default() -> Self {
        InstitutionSection {
            id: String::new(),
            name: "mamori hospital".into(),
            utc_offset_minutes: 540,
            node: "HQ".into(),
            number_patients: false,
            patient_number_digits: 8,
        }
    }
}
impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
            access: "summary".into(),
            sample: 100,
            slow_ms: 1000,
            summary_seconds: 60,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML or does not fit the configuration (file,
    /// what is wrong).
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// An environment variable that cannot be used (name, what is wrong).
    #[error("environment variable {0}: {1}")]
    Env(String, String),
    /// A value out of range or inconsistent with another (what is wrong).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `DIR/mamori.toml` (defaults where absent), then the environment.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let path = dir.join("mamori.toml");
        let mut value: toml::Table = match std::fs::read_to_string(&path) {
            Ok(s) => s.parse().map_err(|e: toml::de::Error| ConfigError::Parse(path.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(e) => return Err(ConfigError::Read(path, e)),
        };
        apply_env(&mut value, std::env::vars())?;
        let cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(path.clone(), e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values serde cannot: addresses, URLs, ranges, names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let s = &self.server;
        for (k, v) in [
            ("server.max_connections", s.max_connections as u64),
            ("server.max_connections_per_source", s.max_connections_per_source as u64),
            ("exchange.max_connections", self.exchange.max_connections as u64),
            ("maintenance.max_connections", self.maintenance.max_connections as u64),
            ("server.header_timeout_seconds", s.header_timeout_seconds),
            ("server.idle_timeout_seconds", s.idle_timeout_seconds),
            ("server.body_timeout_seconds", s.body_timeout_seconds),
            ("auth.source_window_minutes", self.auth.source_window_minutes),
            ("auth.source_max_block_minutes", self.auth.source_max_block_minutes),
            ("compliance.drill_interval_days", self.compliance.drill_interval_days.max(0) as u64),
            ("compliance.break_glass_review_days", self.compliance.break_glass_review_days.max(0) as u64),
            ("compliance.maintenance_unused_days", self.compliance.maintenance_unused_days.max(0) as u64),
            ("compliance.snapshot_max_age_hours", self.compliance.snapshot_max_age_hours.max(0) as u64),
            ("compliance.snapshot_verify_days", self.compliance.snapshot_verify_days.max(0) as u64),
            ("export.retention_hours", self.export.retention_hours),
            ("export.max_active_per_user", self.export.max_active_per_user),
            ("export.resources_per_file", self.export.resources_per_file),
            ("apps.access_token_minutes", self.apps.access_token_minutes),
            ("apps.online_refresh_hours", self.apps.online_refresh_hours),
            ("apps.offline_refresh_days", self.apps.offline_refresh_days),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{k} must be at least 1")));
            }
        }
        if !matches!(self.tls.min_version.as_str(), "1.2" | "1.3") {
            return Err(ConfigError::Invalid("tls.min_version must be \"1.2\" or \"1.3\"".into()));
        }
        if !matches!(self.database.synchronous.as_str(), "full" | "normal") {
            return Err(ConfigError::Invalid("database.synchronous must be \"full\" or \"normal\"".into()));
        }
        let url = self.database.url.trim();
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(ConfigError::Invalid(
                "database.url must be empty (embedded SQLite) or a postgres:// URL".into(),
            ));
        }
        if !url.is_empty() {
            mamori_store::pg::tls_options(url).map_err(|e| ConfigError::Invalid(format!("database.url: {e}")))?;
        }
        let replica = self.database.replica_url.trim();
        if !replica.is_empty() {
            if url.is_empty() {
                return Err(ConfigError::Invalid(
                    "database.replica_url needs database.url: a standby serves searches of a PostgreSQL primary".into(),
                ));
            }
            if !replica.starts_with("postgres://") && !replica.starts_with("postgresql://") {
                return Err(ConfigError::Invalid("database.replica_url must be a postgres:// URL".into()));
            }
            mamori_store::pg::tls_options(replica)
                .map_err(|e| ConfigError::Invalid(format!("database.replica_url: {e}")))?;
        }
        let c = &self.compliance;
        for (k, v) in [
            ("compliance.drill_interval_days", c.drill_interval_days),
            ("compliance.break_glass_review_days", c.break_glass_review_days),
            ("compliance.maintenance_unused_days", c.maintenance_unused_days),
            ("compliance.snapshot_verify_days", c.snapshot_verify_days),
            ("compliance.snapshot_max_age_hours", c.snapshot_max_age_hours / 24),
        ] {
            if v > 36_500 {
                return Err(ConfigError::Invalid(format!("{k} must be at most a hundred years")));
            }
        }
        if self.export.retention_hours > 24 * 366 || self.export.resources_per_file > 1_000_000 {
            return Err(ConfigError::Invalid(
                "export.retention_hours must be at most a year, export.resources_per_file at most 1000000".into(),
            ));
        }
        if self.apps.access_token_minutes > 24 * 60
            || self.apps.online_refresh_hours > 7 * 24
            || self.apps.offline_refresh_days > 366
        {
            return Err(ConfigError::Invalid(
                "apps.access_token_minutes must be at most a day, apps.online_refresh_hours at most a week, apps.offline_refresh_days at most a year"
                    .into(),
            ));
        }
        let code = self.institution.id.trim();
        if !code.is_empty() && !mamori_core::fhir::jp::is_institution_code(code) {
            return Err(ConfigError::Invalid(format!(
                "institution.id '{code}' is not a 10-digit medical institution code (prefecture, point-table kind 1-3, 7 digits)"
            )));
        }
        if self.institution.number_patients && code.is_empty() {
            return Err(ConfigError::Invalid(
                "institution.number_patients needs institution.id: the numbers are in the system named by the institution code"
                    .into(),
            ));
        }
        if !(4..=16).contains(&self.institution.patient_number_digits) {
            return Err(ConfigError::Invalid("institution.patient_number_digits must be 4 to 16".into()));
        }
        for (k, v) in std::iter::once(("fhir.validation".to_owned(), &self.fhir.validation))
            .chain(self.fhir.type_validation.iter().map(|(t, v)| (format!("fhir.type_validation.{t}"), v)))
        {
            if !matches!(v.as_str(), "off" | "warn" | "enforce") {
                return Err(ConfigError::Invalid(format!("{k} must be \"off\", \"warn\" or \"enforce\"")));
            }
        }
        for t in self.fhir.type_validation.keys().chain(self.fhir.required.keys()) {
            if mamori_core::ids::ResourceType::parse(t).is_err() {
                return Err(ConfigError::Invalid(format!("fhir: {t} is not a FHIR R4 resource type")));
            }
        }
        if !matches!(self.log.access.as_str(), "off" | "summary" | "sampled" | "all") {
            return Err(ConfigError::Invalid("log.access must be \"off\", \"summary\", \"sampled\" or \"all\"".into()));
        }
        if self.log.sample == 0 || self.log.summary_seconds == 0 {
            return Err(ConfigError::Invalid("log.sample and log.summary_seconds must be at least 1".into()));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid("log.format must be \"text\" or \"json\"".into()));
        }
        if self.audit.origin.is_empty() || self.audit.origin.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid("audit.origin must be a non-empty name without spaces".into()));
        }
        if self.audit.checkpoint_every_events == 0 || self.audit.checkpoint_every_seconds == 0 {
            return Err(ConfigError::Invalid("audit checkpoint intervals must be positive".into()));
        }
        for (i, w) in self.notify.webhooks.iter().enumerate() {
            if !w.url.starts_with("https://") {
                return Err(ConfigError::Invalid(format!("notify.webhooks[{i}].url must be an https:// URL")));
            }
            if w.name.is_empty() || !w.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(ConfigError::Invalid(format!(
                    "notify.webhooks[{i}].name must be a short name (letters, digits, '-', '_')"
                )));
            }
        }
        for w in &self.audit.witnesses {
            match mamori_audit::note::NoteVerifier::parse(w) {
                Ok(v) if v.is_cosigner() => {}
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "audit.witnesses: '{w}' is not a cosignature/v1 verifier key"
                    )))
                }
            }
        }
        if self.auth.max_failed_logins == 0 || self.auth.login_ttl_minutes <= 0 || self.auth.api_token_ttl_hours <= 0 {
            return Err(ConfigError::Invalid("auth limits must be positive".into()));
        }
        let m = &self.maintenance;
        if !m.listen.is_empty() && m.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!("maintenance.listen '{}' is not an address:port", m.listen)));
        }
        if !(1..=2).contains(&m.approvals) || m.max_window_hours < 1 || m.review_due_hours < 1 || m.cert_days < 1 {
            return Err(ConfigError::Invalid("maintenance: approvals 1 or 2; hours and days positive".into()));
        }
        if self.snapshot.keep == 0 || self.snapshot.activity_days < 1 || self.snapshot.recent_days < 1 {
            return Err(ConfigError::Invalid("snapshot.keep, activity_days and recent_days must be positive".into()));
        }
        for t in self.snapshot.types.iter().chain(&self.snapshot.recent_types) {
            if mamori_core::ids::ResourceType::parse(t).is_err() {
                return Err(ConfigError::Invalid(format!("snapshot: '{t}' is not a FHIR R4 resource type")));
            }
        }
        if !mamori_core::continuity::valid_node(&self.institution.node) {
            return Err(ConfigError::Invalid("institution.node: 1-12 letters or digits".into()));
        }
        let x = &self.exchange;
        if !x.as2_id.is_empty() && !x.as2_id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
            return Err(ConfigError::Invalid("exchange.as2_id: printable ASCII without spaces or quotes".into()));
        }
        if !x.listen.is_empty() && x.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!("exchange.listen '{}' is not an address:port", x.listen)));
        }
        if !x.public_url.is_empty() && !x.public_url.starts_with("https://") {
            return Err(ConfigError::Invalid("exchange.public_url must be an https:// URL".into()));
        }
        if x.max_message_bytes < 1024
            || x.retry_initial_seconds == 0
            || x.retry_max_seconds < x.retry_initial_seconds
            || x.max_attempts == 0
            || x.send_timeout_seconds == 0
            || x.cert_expiry_warn_days < 1
        {
            return Err(ConfigError::Invalid(
                "exchange limits must be positive (and retry_max >= retry_initial)".into(),
            ));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError::Invalid("server.body_limit_bytes must be at least 1024".into()));
        }
        Ok(())
    }

    /// The HTTPS listen address (`server.listen`).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("server.listen '{}' is not an address:port", self.server.listen)))
    }

    /// The base URL for links.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        if !self.server.public_url.is_empty() {
            return self.server.public_url.trim_end_matches('/').to_owned();
        }
        let host = if bound.ip().is_loopback() { "localhost".to_owned() } else { bound.ip().to_string() };
        format!("https://{host}:{}", bound.port())
    }

    /// This institution's AS2 identifier.
    pub fn as2_id(&self) -> String {
        if !self.exchange.as2_id.is_empty() {
            self.exchange.as2_id.clone()
        } else if !self.institution.id.is_empty() {
            self.institution.id.clone()
        } else {
            "mamori".into()
        }
    }

    /// The URL partners post AS2 messages to.
    pub fn as2_url(&self, bound: Option<SocketAddr>) -> String {
        if !self.exchange.public_url.is_empty() {
            return self.exchange.public_url.trim_end_matches('/').to_owned();
        }
        match bound {
            Some(a) if a.ip().is_loopback() => format!("https://localhost:{}/as2", a.port()),
            Some(a) => format!("https://{}/as2", a),
            None => String::new(),
        }
    }

    /// The default configuration as commented TOML, written at first start.
    pub fn default_toml() -> String {
        include_str!("default-config.toml").to_owned()
    }
}

/// Applies `MAMORI_<SECTION>_<KEY>` (or `..._FILE`) to known keys.
fn apply_env(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let defaults = toml::Value::try_from(Config::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let Some(defaults) = defaults.as_table() else {
        return Ok(());
    };
    let vars: Vec<(String, String)> = vars.collect();
    for (section, keys) in defaults {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for (key, default) in keys {
            let name = format!("MAMORI_{}_{}", section.to_uppercase(), key.to_uppercase());
            let file_name = format!("{name}_FILE");
            let raw = if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                v.clone()
            } else if let Some((_, f)) = vars.iter().find(|(k, _)| *k == file_name) {
                std::fs::read_to_string(f)
                    .map_err(|e| ConfigError::Env(file_name.clone(), e.to_string()))?
                    .trim_end()
                    .to_owned()
            } else {
                continue;
            };
            let v = match default {
                toml::Value::Integer(_) => toml::Value::Integer(
                    raw.parse().map_err(|_| ConfigError::Env(name.clone(), "expected an integer".into()))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(
                    raw.parse().map_err(|_| ConfigError::Env(name.clone(), "expected true or false".into()))?,
                ),
                _ => toml::Value::String(raw),
            };
            let sec = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(t) = sec.as_table_mut() {
                t.insert(key.clone(), v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_matches_defaults() {
        let parsed: Config = toml::from_str(&Config::default_toml()).unwrap();
        assert_eq!(toml::to_string(&parsed).unwrap(), toml::to_string(&Config::default()).unwrap());
    }

    #[test]
    fn env_overrides_and_validation() {
        let mut t = toml::Table::new();
        apply_env(
            &mut t,
            vec![
                ("MAMORI_SERVER_LISTEN".to_string(), "127.0.0.1:9999".to_string()),
                ("MAMORI_DATABASE_READERS".into(), "2".into()),
            ]
            .into_iter(),
        )
        .unwrap();
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9999");
        assert_eq!(c.database.readers, 2);
        let mut t = toml::Table::new();
        assert!(apply_env(&mut t, vec![("MAMORI_DATABASE_READERS".to_string(), "x".to_string())].into_iter()).is_err());
        let mut c = Config::default();
        c.tls.min_version = "1.0".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.database.url = "postgres://mamori@db.example.org/mamori".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sslmode=verify-full"), "{e}");
        c.database.url = "postgres://mamori@db.example.org/mamori?sslmode=verify-full".into();
        assert!(c.validate().is_ok());
        // A standby for searches: PostgreSQL's, with the same TLS rules.
        c.database.replica_url = "postgres://mamori@standby.example.org/mamori".into();
        assert!(c.validate().unwrap_err().to_string().contains("database.replica_url"));
        c.database.replica_url = "postgres://mamori@standby.example.org/mamori?sslmode=verify-full".into();
        assert!(c.validate().is_ok());
        c.database.replica_url = "mysql://standby".into();
        assert!(c.validate().unwrap_err().to_string().contains("database.replica_url must be a postgres:// URL"));
        let mut c = Config::default();
        c.database.replica_url = "postgres://postgres@127.0.0.1:5433/mamori".into();
        assert!(c.validate().unwrap_err().to_string().contains("needs database.url"));
        assert!(toml::from_str::<Config>("[server]\nlisten_typo = 1").is_err());
    }

    #[test]
    fn institution_code_and_fhir_policy_are_checked() {
        let mut c = Config::default();
        c.institution.id = "1311234567".into();
        assert!(c.validate().is_ok());
        c.institution.id = "13-1123456".into();
        assert!(c.validate().unwrap_err().to_string().contains("institution.id"));
        // Patient numbering needs the institution code, and sane digits.
        let mut c = Config::default();
        c.institution.number_patients = true;
        assert!(c.validate().unwrap_err().to_string().contains("number_patients needs institution.id"));
        c.institution.id = "1311234567".into();
        assert!(c.validate().is_ok());
        c.institution.patient_number_digits = 3;
        assert!(c.validate().unwrap_err().to_string().contains("patient_number_digits"));
        let mut c = Config::default();
        c.fhir.validation = "strict".into();
        assert!(c.validate().unwrap_err().to_string().contains("fhir.validation"));
        let mut c = Config::default();
        c.fhir.type_validation.insert("Patient".into(), "sometimes".into());
        assert!(c.validate().unwrap_err().to_string().contains("fhir.type_validation.Patient"));
        let mut c = Config::default();
        c.fhir.required.insert("Patinet".into(), "http://x".into());
        assert!(c.validate().unwrap_err().to_string().contains("Patinet"));
        let c: Config = toml::from_str(
            "[fhir]\nvalidation = \"enforce\"\n[fhir.type_validation]\nPatient = \"off\"\n[fhir.required]\nPatient = \"http://x\"\n",
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.fhir.required["Patient"], "http://x");
    }
}

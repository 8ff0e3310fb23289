//! `mamori packages`: the FHIR packages (JP Core, JP-CLINS, ...) a server
//! loads at start, installed in `DATA/packages/`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use clap::Subcommand;
use mamori_service::config::Config;
use mamori_service::conformance;

#[derive(Subcommand)]
pub(crate) enum PackagesCmd {
    /// Check a FHIR NPM package (.tgz) or a folder of definitions and
    /// install it in DIR/packages/; the server loads it at its next start.
    /// A damaged package is refused with the file named.
    Add {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// The package: an NPM .tgz, or a folder (its package.json and the
        /// definitions beside it).
        package: PathBuf,
        /// Install this version in place of an installed one of the same name.
        #[arg(long)]
        replace: bool,
    },
    /// The packages in force: installed ones and those mamori.toml names.
    List {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

pub(crate) fn run(cmd: PackagesCmd) -> Result<()> {
    match cmd {
        PackagesCmd::Add { data, package, replace } => {
            let cfg = config(&data)?;
            let (file, info) =
                conformance::install(&data, &cfg.fhir, &package, replace).map_err(|e| anyhow!("refused: {e}"))?;
            println!("installed {} {} as {}", info.name, info.version, file.display());
            for (t, n) in &info.counts {
                println!("  {t}: {n}");
            }
            println!("restart the server to load it (its search parameters are indexed at that start)");
            Ok(())
        }
        PackagesCmd::List { data } => {
            let cfg = config(&data)?;
            let c = conformance::Conformance::load(&cfg.fhir, &data).map_err(|e| anyhow!(e))?;
            if c.registry.packages().is_empty() {
                println!("no FHIR packages (mamori packages add --data DIR FILE)");
            }
            for (p, src) in c.registry.packages().iter().zip(&c.sources) {
                let counts: Vec<String> = p.counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
                println!("{} {}  {}  ({})", p.name, p.version, src.display(), counts.join(", "));
                if !p.skipped.is_empty() {
                    println!("  {} already defined by an earlier package, kept from there", p.skipped.len());
                }
            }
            let searchable: Vec<String> =
                c.search.package().iter().map(|p| format!("{}.{}", p.rtype.as_str(), p.def.name)).collect();
            if !searchable.is_empty() {
                println!("search parameters: {}", searchable.join(", "));
            }
            for n in &c.not_searchable {
                println!("not searchable: {}: {}", n.url, n.reason);
            }
            Ok(())
        }
    }
}

fn config(data: &Path) -> Result<Config> {
    if !data.join("mamori.toml").is_file() {
        return Err(anyhow!("{} is not an initialized data directory (mamori init)", data.display()));
    }
    Ok(Config::load(data)?)
}

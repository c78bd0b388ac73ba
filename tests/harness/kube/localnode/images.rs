//! What the local node runs for an image: there is no container runtime, so each image the seed's
//! Deployments name maps to one of the seed's applications built by `scripts/seed-apps.sh`
//! (examples/seed/apps/), started as a plain process. This table is the whole mapping; an image
//! that is not in it cannot run (the pod reports `ErrImageNeverPull` naming the image).
//!
//! `env` is the image's own environment (a Dockerfile's `ENV`): the container's `env` of the pod
//! spec overrides it. `{root}` in a value is the pod's root directory, under which the pod's
//! volumes are projected at their `mountPath` (a process has no private `/`), so an app that
//! reads `/app/config/...` in a container is told `{root}/app/config/...` here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// One image the local node can run.
#[derive(Clone, Copy, Debug)]
pub struct ImageCommand {
    /// The image reference exactly as pod specs write it.
    pub image: &'static str,
    /// The app of `scripts/seed-apps.sh` whose launcher (`bin/<app>`) is executed.
    pub app: &'static str,
    /// The image's environment; `{root}` is replaced by the pod's root directory.
    pub env: &'static [(&'static str, &'static str)],
}

/// The images of examples/seed/artifacts/apps/.
pub const IMAGES: &[ImageCommand] = &[
    ImageCommand {
        image: "wardenlym/golang-app-gateway:v1",
        app: "golang-app-gateway",
        env: &[],
    },
    ImageCommand {
        image: "wardenlym/golang-app-data:v1",
        app: "golang-app-data",
        // The app's defaults are the container paths of the seed's ConfigMap and Secret mounts.
        env: &[
            ("CONFIG_FILE", "{root}/app/config/config-data.json"),
            ("SECRET_DIR", "{root}/etc/foo"),
        ],
    },
    // One Spring Boot project, two behaviours: APP_VERSION (see application.properties) is what
    // makes the v2 image answer with golang-app-data's content.
    ImageCommand {
        image: "wardenlym/springboot-app:v1",
        app: "springboot-app",
        env: &[("APP_VERSION", "v1")],
    },
    ImageCommand {
        image: "wardenlym/springboot-app:v2",
        app: "springboot-app",
        env: &[("APP_VERSION", "v2")],
    },
    ImageCommand {
        image: "wardenlym/python-app-anticaptcha:v1",
        app: "python-app-anticaptcha",
        env: &[],
    },
];

/// The table entry for `image`, if any.
pub fn image_command(image: &str) -> Option<&'static ImageCommand> {
    IMAGES.iter().find(|c| c.image == image)
}

impl ImageCommand {
    /// The image's environment with `{root}` resolved.
    pub fn env_for(&self, root: &Path) -> Vec<(String, String)> {
        let root = root.display().to_string();
        self.env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.replace("{root}", &root)))
            .collect()
    }
}

/// The launcher of every seed app (`<cache>/<app>/<hash>/bin/<app>`), built once per process by
/// `scripts/seed-apps.sh` (content-hashed cache in `$SEED_APPS_CACHE`, default
/// target/seed-apps: a warm cache makes this a check of a second or two).
pub fn seed_app_launchers() -> Result<&'static HashMap<String, PathBuf>> {
    static BUILT: OnceLock<std::result::Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build().map_err(|e| format!("{e:#}"))) {
        Ok(paths) => Ok(paths),
        Err(e) => bail!("{e}"),
    }
}

fn build() -> Result<HashMap<String, PathBuf>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let out = Command::new("bash")
        .arg(repo.join("scripts/seed-apps.sh"))
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/seed-apps.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/seed-apps.sh could not build the seed's apps ({}); its messages are above",
            out.status
        );
    }
    let paths: HashMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("seed-app "))
        .filter_map(|l| l.split_once(' '))
        .map(|(app, path)| (app.to_owned(), PathBuf::from(path)))
        .collect();
    for c in IMAGES {
        if !paths.contains_key(c.app) {
            bail!(
                "scripts/seed-apps.sh printed no `seed-app {} <path>` line",
                c.app
            );
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_deployment_image_is_in_the_table() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed/artifacts/apps");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines() {
                if let Some(image) = line.trim().strip_prefix("image: ") {
                    assert!(image_command(image).is_some(), "{image} is not mapped");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 5, "the seed's five images");
    }

    #[test]
    fn root_is_substituted() {
        let c = image_command("wardenlym/golang-app-data:v1").unwrap();
        let env = c.env_for(Path::new("/r"));
        assert!(env.contains(&("SECRET_DIR".into(), "/r/etc/foo".into())));
    }
}

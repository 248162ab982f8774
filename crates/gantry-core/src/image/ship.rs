//! Shipping images to hosts without a registry, the CLI's side of a
//! deploy's upload. Once per deploy, every image service's image that this
//! machine's Docker Engine holds (built by `build`, or present already) is
//! exported (`docker save`) and split into blobs; each host is then asked
//! which of them it lacks (its engine's layers count), is sent only those
//! through the resumable, digest-checked blob path, and loads the image
//! before the deploy runs it. A service then runs the image pinned by a tag
//! naming its id (`web:gantry-3f2a9c1e0b7d`), so a release keeps its image
//! and a rollback runs the old one.
//!
//! An image this machine does not hold (`postgres:16` never pulled here) is
//! not shipped: the host's agent pulls it from its registry
//! (tests/registry_pull.rs, against a registry of the test's own).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use crate::agent_api::v1::Workload as WireWorkload;
use crate::agent_api::{ImageManifest, ServiceSpec};
use crate::config::resolve::{Build, Service, Workload};
use crate::deploy::Upload;
use crate::host::Host;
use crate::image::archive::Layer;
use crate::progress::Progress;
use crate::{Code, Error};

use super::archive::split_archive;

/// The images of one deploy. An image is exported (`docker save`, the
/// slow part: seconds for a few hundred MB) only when a host lacks it: a
/// host whose engine holds the image's id, as `local` always does, is only
/// asked to tag it.
pub struct Shipment {
    /// The project, where `docker` runs.
    project: PathBuf,
    /// The image as gantry.toml names it → what is known of it.
    images: BTreeMap<String, Image>,
    /// The blobs of the images exported so far, named by digest; removed
    /// with the shipment.
    blobs: Mutex<Option<tempfile::TempDir>>,
}

struct Image {
    /// What `docker image inspect` tells: the id and the layers' diff ids,
    /// with no sizes. Enough for a host to say whether it holds the image.
    inspected: ImageManifest,
    /// The manifest of the exported blobs, once a host lacked the image.
    exported: Mutex<Option<ImageManifest>>,
}

impl Shipment {
    /// A shipment of nothing: no service runs an image this machine holds.
    pub fn none() -> Shipment {
        Shipment {
            project: PathBuf::new(),
            images: BTreeMap::new(),
            blobs: Mutex::new(None),
        }
    }

    /// Finds the image of every image service in this machine's engine. A
    /// built image must be here; another one that is not (or no `docker`
    /// here at all) is left for the host to pull.
    pub fn export(
        project: &Path,
        services: &[Service],
        progress: &dyn Progress,
    ) -> Result<Shipment, Error> {
        let mut wanted: BTreeMap<&str, bool> = BTreeMap::new();
        for service in services {
            if let Workload::Compose { image } = &service.workload {
                let built = matches!(service.build, Some(Build::Image(_)));
                *wanted.entry(image.as_str()).or_default() |= built;
            }
        }
        let mut shipment = Shipment::none();
        shipment.project = project.to_owned();
        // One `docker image inspect` per image, side by side: each is a
        // process of its own and a round trip to the engine.
        let inspections: Vec<_> = std::thread::scope(|scope| {
            let running: Vec<_> = wanted
                .iter()
                .map(|(image, built)| {
                    let (image, built) = (*image, *built);
                    (image, scope.spawn(move || inspect(project, image, built)))
                })
                .collect();
            running
                .into_iter()
                .map(|(image, handle)| {
                    let inspected = handle
                        .join()
                        .unwrap_or_else(|_| Err(export_failed(image, "inspecting it panicked")));
                    (image, inspected)
                })
                .collect()
        });
        for (image, inspected) in inspections {
            let Some(inspected) = inspected? else {
                progress.step(&format!(
                    "{image} is not on this machine: each host pulls it from its registry"
                ));
                continue;
            };
            let exported = Mutex::new(None);
            shipment.images.insert(
                image.to_owned(),
                Image {
                    inspected,
                    exported,
                },
            );
        }
        Ok(shipment)
    }

    /// Runs each shipped image by its pinned tag.
    pub fn pin(&self, specs: &mut [ServiceSpec]) {
        for spec in specs {
            if let WireWorkload::Compose { image } = &mut spec.workload
                && let Some(known) = self.images.get(image.as_str())
                && let Some(pinned) = known.inspected.tags.first()
            {
                *image = pinned.clone();
            }
        }
    }

    /// Sends `agent` the blobs of each image its engine lacks (exporting
    /// the image first, once a deploy), resuming interrupted uploads, and
    /// has it load them; adds what was sent to `upload`
    /// (`image_bytes_sent` counts them apart).
    pub fn send(
        &self,
        agent: &dyn Host,
        upload: &mut Upload,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        for (image, known) in &self.images {
            if agent
                .image_blobs_missing(&known.inspected)?
                .digests
                .is_empty()
            {
                // The host's engine holds the image: tag it, nothing to send.
                agent.load_image(&known.inspected)?;
                continue;
            }
            let (manifest, dir) = self.exported(image, known, progress)?;
            let missing = agent.image_blobs_missing(&manifest)?;
            if !missing.digests.is_empty() {
                let bytes: u64 = manifest
                    .blobs()
                    .iter()
                    .filter(|(d, _)| missing.digests.iter().any(|m| m == d))
                    .map(|(_, size)| size)
                    .sum();
                progress.step(&format!(
                    "sending {} of {} blobs of {image} ({bytes} bytes) to {}",
                    missing.digests.len(),
                    manifest.blobs().len(),
                    agent.name()
                ));
            }
            let before = upload.bytes_sent;
            let sources = |digest: &str| {
                let path = dir.join(digest);
                path.is_file().then_some(path)
            };
            crate::deploy::send_missing(agent, &missing, &sources, upload, progress)?;
            upload.image_bytes_sent += upload.bytes_sent - before;
            let loaded = agent.load_image(&manifest)?;
            if loaded.layers_loaded > 0 {
                progress.step(&format!(
                    "{}: loaded {image} ({} new layers)",
                    agent.name(),
                    loaded.layers_loaded
                ));
            }
        }
        Ok(())
    }

    /// The image's exported manifest and the blobs' directory, exporting
    /// it the first time a host needs it.
    fn exported(
        &self,
        image: &str,
        known: &Image,
        progress: &dyn Progress,
    ) -> Result<(ImageManifest, PathBuf), Error> {
        let mut blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        let dir = match &*blobs {
            Some(dir) => dir.path().to_owned(),
            None => blobs
                .insert(
                    tempfile::Builder::new()
                        .prefix("gantry-images-")
                        .tempdir()
                        .map_err(Error::io("make a directory for", "the images' blobs"))?,
                )
                .path()
                .to_owned(),
        };
        let mut exported = known.exported.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(manifest) = &*exported {
            return Ok((manifest.clone(), dir));
        }
        progress.step(&format!("exporting {image}"));
        let manifest = save(&self.project, image, &known.inspected.config, &dir)?;
        Ok((exported.insert(manifest).clone(), dir))
    }
}

/// The tag a shipped image runs under on hosts: its name with a tag made of
/// its id, so each build has its own (`web:1.0` → `web:gantry-3f2a9c1e0b7d`).
pub fn pinned_tag(image: &str, id: &str) -> String {
    let short = id.get(..PINNED_ID_LEN).unwrap_or(id);
    format!("{}:{PINNED_PREFIX}{short}", repository(image))
}

/// Whether `reference` is a tag [`pinned_tag`] made (and so Gantry's to
/// remove once no kept release names it).
pub fn is_pinned(reference: &str) -> bool {
    reference.rsplit_once(':').is_some_and(|(_, tag)| {
        tag.strip_prefix(PINNED_PREFIX).is_some_and(|id| {
            id.len() == PINNED_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
        })
    })
}

const PINNED_PREFIX: &str = "gantry-";
const PINNED_ID_LEN: usize = 12;

/// `image` without its tag.
fn repository(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => image,
    }
}

/// The id (hex) and layers of `image` in this machine's engine, as a
/// manifest without sizes tagged with its pin; `None` when it is not there
/// (or no engine is), unless it was `built` here.
fn inspect(project: &Path, image: &str, built: bool) -> Result<Option<ImageManifest>, Error> {
    let format = "{{.Id}}{{range .RootFS.Layers}} {{.}}{{end}}";
    let args = ["image", "inspect", "--format", format, image];
    let ran = super::docker(&args.map(std::ffi::OsStr::new), project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let ran = match ran {
        Ok(ran) => ran,
        Err(e) if !built && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(super::spawn_error(e)),
    };
    let text = String::from_utf8_lossy(&ran.stdout);
    let mut words = text.split_whitespace().map(|w| w.strip_prefix("sha256:"));
    match (ran.status.success(), words.next().flatten()) {
        (true, Some(id)) => {
            let layers = words
                .map(|digest| {
                    digest
                        .map(|d| Layer {
                            digest: d.to_owned(),
                            size: 0,
                        })
                        .ok_or_else(|| export_failed(image, "its layers are not sha256 digests"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(ImageManifest {
                tags: vec![pinned_tag(image, id)],
                config: id.to_owned(),
                config_size: 0,
                layers,
            }))
        }
        _ if !built => Ok(None),
        _ => Err(export_failed(
            image,
            &format!(
                "it is not in this machine's Docker Engine: {}",
                String::from_utf8_lossy(&ran.stderr).trim()
            ),
        )),
    }
}

/// The reference `docker save` exports exactly one image for: a name
/// without a tag is `:latest` (`docker save web` would export every tag of
/// `web`, the pinned ones of earlier deploys included).
fn one_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// `docker save image` split into blobs in `dir`, tagged with its pin.
fn save(project: &Path, image: &str, id: &str, dir: &Path) -> Result<ImageManifest, Error> {
    let reference = one_image(image);
    let args = ["save", reference.as_str()];
    let mut child = super::docker(&args.map(std::ffi::OsStr::new), project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(super::spawn_error)?;
    let Some(stdout) = child.stdout.take() else {
        return Err(export_failed(image, "docker save gave no output"));
    };
    let mut stdout = std::io::BufReader::new(stdout);
    let split = split_archive(&mut stdout, dir, vec![pinned_tag(image, id)]);
    // Whatever follows the archive's end (padding): read, so docker never
    // writes into a closed pipe.
    let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.by_ref().take(64 * 1024).read_to_string(&mut stderr);
    }
    let status = child
        .wait()
        .map_err(Error::io("wait for `docker save` of", PathBuf::from(image)))?;
    if !status.success() {
        return Err(export_failed(
            image,
            &format!("docker save {status}: {}", stderr.trim()),
        ));
    }
    let manifest = split.map_err(|e| export_failed(image, &e.to_string()))?;
    if manifest.config != id {
        return Err(export_failed(
            image,
            "it changed while it was exported (another build tagged it); deploy again",
        ));
    }
    Ok(manifest)
}

fn export_failed(image: &str, why: &str) -> Error {
    Error::Image {
        code: Code::ImageExportFailed,
        message: format!("cannot export image {image}: {why}"),
        hint: "check `docker image inspect` of it on this machine; a `build` table builds it on deploy".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_tag_names_the_image_by_its_id() {
        let id = "3f2a9c1e0b7d44aa";
        assert_eq!(pinned_tag("web", id), "web:gantry-3f2a9c1e0b7d");
        assert_eq!(pinned_tag("web:1.0", id), "web:gantry-3f2a9c1e0b7d");
        assert_eq!(
            pinned_tag("registry:5000/shop/web", id),
            "registry:5000/shop/web:gantry-3f2a9c1e0b7d"
        );
        for made in ["web", "web:1.0", "registry:5000/shop/web"] {
            assert!(is_pinned(&pinned_tag(made, id)), "{made}");
        }
        for other in [
            "web",
            "web:gantry",
            "web:gantry-latest",
            "postgres:16",
            "registry:5000/gantry-3f2a9c1e0b7d",
        ] {
            assert!(!is_pinned(other), "{other}");
        }
    }

    #[test]
    fn an_image_saved_without_a_tag_is_its_latest_alone() {
        assert_eq!(one_image("web"), "web:latest");
        assert_eq!(one_image("web:1.0"), "web:1.0");
        assert_eq!(
            one_image("registry:5000/shop/web"),
            "registry:5000/shop/web:latest"
        );
        assert_eq!(one_image("web@sha256:ab"), "web@sha256:ab");
    }
}

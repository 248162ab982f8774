//! The registry-less image format, shared by both ends: an image exported
//! with `docker save` is split into content-addressed blobs, its config
//! (named by the image id) and its layers (named by their diff ids, the
//! sha256 of each uncompressed layer tar), described by an [`ImageManifest`].
//! The blobs travel like any other (the agent's blob store: resumable,
//! checked by digest). On the host, only the layers its engine lacks are
//! needed: a layer is present when its chain id (the layer and every layer
//! under it, as Docker keys its layer store) is the prefix of some image
//! the engine holds. The host then writes a `docker load` archive holding
//! the config and the missing layers only ([`assemble`]), and loads it.
//!
//! Pure: files and streams only, no Docker; the agent's `container::image`
//! talks to the engine.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifact::hex;

/// An image archive or manifest that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("image archive: {0}")]
pub struct ArchiveError(pub String);

/// The most an exported image may weigh.
pub const MAX_IMAGE_BYTES: u64 = 32 << 30;
/// The most files an exported archive, and the most layers an image, may hold.
const MAX_ARCHIVE_ENTRIES: usize = 10_000;
const MAX_LAYERS: usize = 256;
const MAX_TAGS: usize = 16;
/// The most of an archive's small JSON files (manifest, config) read.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// The most images the host's engine is asked about for its layers.
pub const MAX_HOST_IMAGES: usize = 10_000;

/// One image as blobs: what the host needs to rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageManifest {
    /// The names it is loaded under (`web:3f2a`).
    pub tags: Vec<String>,
    /// The config blob's digest (hex sha256): the image id.
    pub config: String,
    pub config_size: u64,
    /// Bottom first, as the image's rootfs lists them.
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Layer {
    /// The layer's diff id (hex sha256 of the uncompressed tar), which is
    /// also its blob's digest.
    pub digest: String,
    pub size: u64,
}

impl ImageManifest {
    /// Every blob the image is made of: config first, then layers.
    pub fn blobs(&self) -> Vec<(&str, u64)> {
        std::iter::once((self.config.as_str(), self.config_size))
            .chain(self.layers.iter().map(|l| (l.digest.as_str(), l.size)))
            .collect()
    }

    /// Refuses a manifest a host should not act on, saying why.
    pub fn check(&self) -> Result<(), ArchiveError> {
        let bad = |why: String| Err(ArchiveError(why));
        if self.tags.is_empty() || self.tags.len() > MAX_TAGS {
            return bad(format!(
                "an image needs 1 to {MAX_TAGS} tags, found {}",
                self.tags.len()
            ));
        }
        for tag in &self.tags {
            if tag.is_empty()
                || tag.len() > 255
                || !tag.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
                })
            {
                return bad(format!(
                    "tag `{tag}` is not an image name (letters, digits, . _ - / :)"
                ));
            }
        }
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return bad(format!(
                "an image has 1 to {MAX_LAYERS} layers, found {}",
                self.layers.len()
            ));
        }
        for digest in std::iter::once(&self.config).chain(self.layers.iter().map(|l| &l.digest)) {
            if !is_hex_digest(digest) {
                return bad(format!("`{digest}` is not a sha256 digest"));
            }
        }
        Ok(())
    }

    /// The layers a host holding the chain ids `present` lacks.
    pub fn missing_layers(&self, present: &HashSet<String>) -> Vec<&Layer> {
        let digests: Vec<String> = self.layers.iter().map(|l| l.digest.clone()).collect();
        chain_ids(&digests)
            .iter()
            .zip(&self.layers)
            .filter(|(chain, _)| !present.contains(*chain))
            .map(|(_, layer)| layer)
            .collect()
    }
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The chain id of each layer (hex), bottom first: the first layer's is its
/// diff id, each next one `sha256("sha256:PARENT sha256:DIFF")`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let chain = match chains.last() {
            None => diff.clone(),
            Some(parent) => hex(&Sha256::digest(
                format!("sha256:{parent} sha256:{diff}").as_bytes(),
            )),
        };
        chains.push(chain);
    }
    chains
}

fn archive_error(what: impl std::fmt::Display) -> ArchiveError {
    ArchiveError(what.to_string())
}

/// `docker save`'s manifest.json, one entry per image.
#[derive(Debug, Serialize, Deserialize)]
struct SaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The part of an image config that names its layers.
#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Splits a `docker save` archive of one image into blobs in `blobs`
/// (files named by their hex sha256), and returns its manifest loaded as
/// `tags`. Every layer's bytes are checked against the diff id its config
/// names. Reads the archive once, as a stream.
/// An archive entry's path, without a leading `./`.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ArchiveError> {
    Ok(entry
        .path()
        .map_err(archive_error)?
        .to_string_lossy()
        .trim_start_matches("./")
        .to_owned())
}

pub fn split_archive(
    archive: impl Read,
    blobs: &Path,
    tags: Vec<String>,
) -> Result<ImageManifest, ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e: io::Error| archive_error(format!("{}: {e}", path.display()))
    };
    fs::create_dir_all(blobs).map_err(io(blobs))?;
    let mut tar = tar::Archive::new(archive);
    // Path in the archive → (digest, size); links resolved at the end.
    let mut files: HashMap<String, (String, u64)> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut manifest_json: Option<Vec<u8>> = None;
    let mut total = 0u64;
    for (count, entry) in tar.entries().map_err(archive_error)?.enumerate() {
        if count >= MAX_ARCHIVE_ENTRIES {
            return Err(archive_error(format!(
                "more than {MAX_ARCHIVE_ENTRIES} files in the image archive"
            )));
        }
        let mut entry = entry.map_err(archive_error)?;
        let path = entry_path(&entry)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            if let Some(target) = entry.link_name().map_err(archive_error)? {
                let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                let target = normalize(&base.join(target));
                links.push((path, target));
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if path == "manifest.json" {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_JSON_BYTES)
                .read_to_end(&mut bytes)
                .map_err(archive_error)?;
            manifest_json = Some(bytes);
            continue;
        }
        total = total.saturating_add(entry.header().size().unwrap_or(0));
        if total > MAX_IMAGE_BYTES {
            return Err(archive_error(format!(
                "the image is larger than {} GiB",
                MAX_IMAGE_BYTES >> 30
            )));
        }
        let stored = store(&mut entry, blobs)?;
        files.insert(path, stored);
    }
    for (link, target) in links {
        if let Some(stored) = files.get(&target).cloned() {
            files.insert(link, stored);
        }
    }
    let manifest_json =
        manifest_json.ok_or_else(|| archive_error("the archive has no manifest.json"))?;
    let entries: Vec<SaveEntry> = serde_json::from_slice(&manifest_json)
        .map_err(|e| archive_error(format!("manifest.json: {e}")))?;
    let [entry] = entries.as_slice() else {
        return Err(archive_error(format!(
            "the archive holds {} images, not one",
            entries.len()
        )));
    };
    let find = |path: &str| {
        files
            .get(path)
            .cloned()
            .ok_or_else(|| archive_error(format!("the archive lacks {path}")))
    };
    let (config, config_size) = find(&entry.config)?;
    let config_path = blobs.join(&config);
    let config_bytes = fs::read(&config_path).map_err(io(&config_path))?;
    let image_config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| archive_error(format!("the image config: {e}")))?;
    if image_config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(archive_error(format!(
            "the config names {} layers and the archive {}",
            image_config.rootfs.diff_ids.len(),
            entry.layers.len()
        )));
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (path, diff_id) in entry.layers.iter().zip(&image_config.rootfs.diff_ids) {
        let (digest, size) = find(path)?;
        if diff_id.strip_prefix("sha256:") != Some(digest.as_str()) {
            return Err(archive_error(format!(
                "layer {path} hashes to sha256:{digest}, its config says {diff_id} (a compressed layer?)"
            )));
        }
        layers.push(Layer { digest, size });
    }
    remove_unnamed(blobs, &files, &config, &layers);
    let manifest = ImageManifest {
        tags,
        config,
        config_size,
        layers,
    };
    manifest.check()?;
    Ok(manifest)
}

/// Keeps only the blobs the manifest names (docker save adds small
/// per-layer files).
fn remove_unnamed(
    blobs: &Path,
    files: &HashMap<String, (String, u64)>,
    config: &str,
    layers: &[Layer],
) {
    let wanted: HashSet<&str> = std::iter::once(config)
        .chain(layers.iter().map(|l| l.digest.as_str()))
        .collect();
    for (digest, _) in files.values() {
        if !wanted.contains(digest.as_str()) {
            let _ = fs::remove_file(blobs.join(digest));
        }
    }
}

/// `a/b/../c` → `a/c`, for link targets inside the archive.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Copies one archive entry into `blobs/<hex>`, hashing as it goes.
fn store(entry: &mut impl Read, blobs: &Path) -> Result<(String, u64), ArchiveError> {
    let mut staged = tempfile::NamedTempFile::new_in(blobs).map_err(archive_error)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(archive_error(e)),
        };
        hasher.update(&buffer[..n]);
        staged.write_all(&buffer[..n]).map_err(archive_error)?;
        size += n as u64;
    }
    let digest = hex(&hasher.finalize());
    staged
        .persist(blobs.join(&digest))
        .map_err(|e| archive_error(e.error))?;
    Ok((digest, size))
}

/// Writes a `docker load` archive of `manifest` to `out`: its config and
/// the files of the layers not in `present` (chain ids the host's engine
/// holds); `blob` names where each blob's bytes are. Returns the layer
/// bytes written.
pub fn assemble(
    manifest: &ImageManifest,
    present: &HashSet<String>,
    blob: impl Fn(&str) -> PathBuf,
    out: impl Write,
) -> Result<u64, ArchiveError> {
    manifest.check()?;
    let missing: HashSet<&str> = manifest
        .missing_layers(present)
        .into_iter()
        .map(|l| l.digest.as_str())
        .collect();
    let entry = SaveEntry {
        config: format!("{}.json", manifest.config),
        repo_tags: Some(manifest.tags.clone()),
        layers: manifest
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", l.digest))
            .collect(),
    };
    let manifest_json = serde_json::to_vec(&[entry]).map_err(archive_error)?;
    let mut tar = tar::Builder::new(out);
    let mut append = |name: &str, size: u64, reader: &mut dyn Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, reader)
            .map_err(|e| archive_error(format!("{name}: {e}")))
    };
    append(
        "manifest.json",
        manifest_json.len() as u64,
        &mut manifest_json.as_slice(),
    )?;
    let open = |digest: &str, size: u64| -> Result<File, ArchiveError> {
        let path = blob(digest);
        let file =
            File::open(&path).map_err(|e| archive_error(format!("{}: {e}", path.display())))?;
        let actual = file.metadata().map_err(archive_error)?.len();
        if actual != size {
            return Err(archive_error(format!(
                "blob {digest} has {actual} bytes, the manifest says {size}"
            )));
        }
        Ok(file)
    };
    let mut config = open(&manifest.config, manifest.config_size)?;
    append(
        &format!("{}.json", manifest.config),
        manifest.config_size,
        &mut config,
    )?;
    let mut written = 0u64;
    let mut done = HashSet::new();
    for layer in &manifest.layers {
        if !missing.contains(layer.digest.as_str()) || !done.insert(layer.digest.as_str()) {
            continue;
        }
        let mut file = open(&layer.digest, layer.size)?;
        append(
            &format!("{}/layer.tar", layer.digest),
            layer.size,
            &mut file,
        )?;
        written += layer.size;
    }
    tar.finish().map_err(archive_error)?;
    Ok(written)
}

/// Blobs for `assemble` from a directory of `<hex>` files.
pub fn blob_in(dir: &Path) -> impl Fn(&str) -> PathBuf + '_ {
    move |digest| dir.join(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        hex(&Sha256::digest([n]))
    }

    fn manifest(layers: &[u8]) -> ImageManifest {
        ImageManifest {
            tags: vec!["web:2".to_owned()],
            config: digest(0),
            config_size: 10,
            layers: layers
                .iter()
                .map(|n| Layer {
                    digest: digest(*n),
                    size: u64::from(*n) * 100,
                })
                .collect(),
        }
    }

    #[test]
    fn chain_ids_follow_dockers_definition() {
        // The first chain id is the diff id; each next one hashes its parent's.
        let diffs = vec![digest(1), digest(2)];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], diffs[0]);
        let expected = hex(&Sha256::digest(
            format!("sha256:{} sha256:{}", diffs[0], diffs[1]).as_bytes(),
        ));
        assert_eq!(chains[1], expected);
    }

    #[test]
    fn a_layer_counts_as_present_only_on_the_same_parents() {
        let old = manifest(&[1, 2]);
        let new = manifest(&[1, 2, 3]);
        let present: HashSet<String> = chain_ids(&[digest(1), digest(2)]).into_iter().collect();
        let missing: Vec<&str> = new
            .missing_layers(&present)
            .iter()
            .map(|l| l.digest.as_str())
            .collect();
        assert_eq!(missing, vec![digest(3)]);
        assert!(old.missing_layers(&present).is_empty());
        // Layer 2 on another base is another layer for Docker.
        let rebased = manifest(&[4, 2]);
        assert_eq!(rebased.missing_layers(&present).len(), 2);
    }

    #[test]
    fn a_manifest_with_a_bad_tag_or_digest_is_refused() {
        let mut bad = manifest(&[1]);
        bad.tags = vec!["web 2; rm".to_owned()];
        assert!(
            bad.check()
                .expect_err("refused")
                .to_string()
                .contains("web 2")
        );
        let mut bad = manifest(&[1]);
        bad.layers[0].digest = "../../etc/passwd".to_owned();
        assert!(bad.check().is_err());
        assert!(manifest(&[]).check().is_err());
        assert!(manifest(&[1, 2]).check().is_ok());
    }

    /// A `docker save`-shaped archive of one image whose config names
    /// `diff_ids` and whose layer files hold `layers`.
    fn save_archive(diff_ids: &[String], layers: &[&[u8]]) -> Vec<u8> {
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let config = serde_json::to_vec(&config).expect("json");
        let config_name = format!("{}.json", hex(&Sha256::digest(&config)));
        let layer_names: Vec<String> = (0..layers.len())
            .map(|i| format!("l{i}/layer.tar"))
            .collect();
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["x:1"], "Layers": layer_names}]);
        let manifest = serde_json::to_vec(&manifest).expect("json");
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, data).expect("append");
        };
        for (name, data) in layer_names.iter().zip(layers) {
            add(name, data);
            add(&name.replace("layer.tar", "VERSION"), b"1.0");
        }
        add(&config_name, &config);
        add("manifest.json", &manifest);
        tar.into_inner().expect("tar")
    }

    #[test]
    fn an_archive_splits_into_its_config_and_layers_by_digest() {
        let layers: [&[u8]; 2] = [b"base layer", b"top layer"];
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| format!("sha256:{}", hex(&Sha256::digest(l))))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = save_archive(&diff_ids, &layers);
        let manifest =
            split_archive(archive.as_slice(), dir.path(), vec!["web:2".to_owned()]).expect("split");
        assert_eq!(manifest.layers.len(), 2);
        assert_eq!(manifest.layers[1].size, 9);
        assert_eq!(
            fs::read(dir.path().join(&manifest.layers[1].digest)).expect("blob"),
            b"top layer"
        );
        // Only the named blobs are kept: config and two layers.
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 3);

        // Reassembled without the base (the host has it): config and top only.
        let present: HashSet<String> = chain_ids(&[manifest.layers[0].digest.clone()])
            .into_iter()
            .collect();
        let mut out = Vec::new();
        let written =
            assemble(&manifest, &present, blob_in(dir.path()), &mut out).expect("assemble");
        assert_eq!(written, 9);
        let mut names: Vec<String> = tar::Archive::new(out.as_slice())
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        let mut expected = vec![
            "manifest.json".to_owned(),
            format!("{}.json", manifest.config),
            format!("{}/layer.tar", manifest.layers[1].digest),
        ];
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_layer_that_does_not_hash_to_its_diff_id_is_refused() {
        let claimed = format!("sha256:{}", hex(&Sha256::digest(b"what the config says")));
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = save_archive(&[claimed], &[b"something else"]);
        let error = split_archive(archive.as_slice(), dir.path(), vec!["web:2".to_owned()])
            .expect_err("refused");
        assert!(error.to_string().contains("l0/layer.tar"), "{error}");
    }
}

//! Images without a registry. On the user's machine an image is exported
//! (`docker save`) and split into content-addressed blobs: its config
//! (named by the image id) and its layers (named by their diff ids, the
//! sha256 of each uncompressed layer tar), described by an `ImageManifest`.
//! The blobs travel like any other (the agent's blob store: resumable,
//! checked by digest). On the host, only the layers its engine lacks are
//! needed: a layer is present when its chain id (the layer and every layer
//! under it, as Docker keys its layer store) is the prefix of some image
//! the engine holds. The host then writes a `docker load` archive holding
//! the config and the missing layers only, and loads it.
//!
//! Found by experiment on Docker 20.10 (the classic image store):
//! `docker load` reads a layer's file only when its chain id is absent
//! from the layer store, so an archive may omit the files of layers the
//! daemon has. Docker's containerd image store (the default of new
//! installs from Docker 29) is untested.

//! The format itself (manifest, split, assemble) is gantry-core's
//! `image::archive`, which the CLI uses too; this is the engine's side.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use bollard::models::ImageInspect;
use bollard::query_parameters::{ImportImageOptions, ListImagesOptions};
use futures_util::StreamExt;

pub use gantry_core::image::archive::{
    ArchiveError, ImageManifest, Layer, MAX_HOST_IMAGES, MAX_IMAGE_BYTES, assemble, blob_in,
    chain_ids, split_archive,
};

use super::{ContainerError, Engine};

impl From<ArchiveError> for ContainerError {
    fn from(error: ArchiveError) -> ContainerError {
        ContainerError::Archive(error.0)
    }
}

fn archive_error(what: impl std::fmt::Display) -> ContainerError {
    ContainerError::Archive(what.to_string())
}

impl Engine {
    /// Exports `image` (`docker save`) and splits it into blobs in `blobs`;
    /// its manifest names it `tags` for the host.
    pub async fn export_image(
        &self,
        image: &str,
        blobs: &Path,
        tags: Vec<String>,
    ) -> Result<ImageManifest, ContainerError> {
        fs::create_dir_all(blobs).map_err(archive_error)?;
        let mut staged = tempfile::NamedTempFile::new_in(blobs).map_err(archive_error)?;
        let mut stream = self.docker.export_image(image);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) if super::is_not_found(&e) => {
                    return Err(ContainerError::NoImage {
                        image: image.to_owned(),
                    });
                }
                Err(e) => return Err(ContainerError::engine("save", image, e)),
            };
            size += chunk.len() as u64;
            if size > MAX_IMAGE_BYTES + (1 << 20) {
                return Err(archive_error(format!(
                    "{image} is larger than {} GiB",
                    MAX_IMAGE_BYTES >> 30
                )));
            }
            staged.write_all(&chunk).map_err(archive_error)?;
        }
        staged.flush().map_err(archive_error)?;
        let blobs = blobs.to_owned();
        tokio::task::spawn_blocking(move || {
            let file = staged.reopen().map_err(archive_error)?;
            split_archive(io::BufReader::new(file), &blobs, tags).map_err(ContainerError::from)
        })
        .await
        .map_err(archive_error)?
    }

    /// The chain ids of every layer the engine's images are made of.
    pub async fn present_layers(&self) -> Result<HashSet<String>, ContainerError> {
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| ContainerError::engine("list", "images", e))?;
        let mut present = HashSet::new();
        for summary in images.iter().take(MAX_HOST_IMAGES) {
            let inspected = match self.docker.inspect_image(&summary.id).await {
                Ok(inspected) => inspected,
                // Removed since the listing.
                Err(e) if super::is_not_found(&e) => continue,
                Err(e) => return Err(ContainerError::engine("inspect image", &summary.id, e)),
            };
            let diff_ids: Vec<String> = inspected
                .root_fs
                .and_then(|r| r.layers)
                .unwrap_or_default()
                .iter()
                .filter_map(|d| d.strip_prefix("sha256:").map(str::to_owned))
                .collect();
            present.extend(chain_ids(&diff_ids));
        }
        Ok(present)
    }

    /// Loads a `docker load` archive (see `assemble`).
    pub async fn load(&self, archive: &Path) -> Result<(), ContainerError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| archive_error(format!("{}: {e}", archive.display())))?;
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        let mut progress = self.docker.import_image(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            bollard::body_try_stream(chunks),
            None,
        );
        while let Some(item) = progress.next().await {
            let info =
                item.map_err(|e| ContainerError::engine("load", archive.display().to_string(), e))?;
            if let Some(detail) = info.error_detail {
                return Err(ContainerError::Engine {
                    action: "load",
                    target: archive.display().to_string(),
                    message: detail.message.unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Whether the engine holds the image whose id is `id` (hex sha256).
    pub async fn has_image(&self, id: &str) -> Result<bool, ContainerError> {
        match self.docker.inspect_image(&format!("sha256:{id}")).await {
            Ok(_) => Ok(true),
            Err(e) if super::is_not_found(&e) => Ok(false),
            Err(e) => Err(ContainerError::engine("inspect image", id, e)),
        }
    }

    /// Names the image `id` as each of `tags` (`name:tag`, checked by
    /// `ImageManifest::check`).
    pub async fn tag(&self, id: &str, tags: &[String]) -> Result<(), ContainerError> {
        for name in tags {
            let (repo, tag) = split_tag(name);
            let options = bollard::query_parameters::TagImageOptionsBuilder::new()
                .repo(repo)
                .tag(tag)
                .build();
            self.docker
                .tag_image(&format!("sha256:{id}"), Some(options))
                .await
                .map_err(|e| ContainerError::engine("tag", name.clone(), e))?;
        }
        Ok(())
    }
}

impl Engine {
    /// Pulls `image` from its registry when the engine lacks it: an image
    /// gantry.toml names that the user's machine did not have, so the deploy
    /// did not ship it. An image the deploy shipped (tagged `gantry-<id>`)
    /// is never pulled. A registry that lacks the tag or does not answer
    /// fails it with the engine's words (tests/registry_pull.rs). The
    /// image as the engine then describes it.
    pub async fn pull_if_absent(&self, image: &str) -> Result<ImageInspect, ContainerError> {
        match self.docker.inspect_image(image).await {
            Ok(found) => return Ok(found),
            Err(e) if super::is_not_found(&e) => {}
            Err(e) => return Err(ContainerError::engine("inspect image", image, e)),
        }
        let (repo, tag) = split_tag(image);
        if tag.starts_with("gantry-") {
            return Err(ContainerError::NoImage {
                image: image.to_owned(),
            });
        }
        tracing::info!(image, "pulling the image from its registry");
        // The tag is always given: without one Docker pulls every tag.
        let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
            .from_image(repo)
            .tag(tag)
            .build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(item) = progress.next().await {
            let message = match item {
                Ok(info) => match info.error_detail {
                    Some(detail) => detail.message.unwrap_or_default(),
                    None => continue,
                },
                Err(e) => super::describe(&e),
            };
            tracing::warn!(image, %message, "the pull failed");
            return Err(ContainerError::PullFailed {
                image: image.to_owned(),
                message,
            });
        }
        self.docker
            .inspect_image(image)
            .await
            .map_err(|e| ContainerError::engine("inspect image", image, e))
    }
}

/// `registry:5000/web:3` → (`registry:5000/web`, `3`); no tag is `latest`.
fn split_tag(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

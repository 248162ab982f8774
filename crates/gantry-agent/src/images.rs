//! Images shipped without a registry, the host's side of a deploy's
//! upload: which blobs of an image the host needs (none when its engine has
//! the image; else the config and the layers the engine lacks, less what
//! the blob store holds), and loading the image from those blobs. Only the
//! layers the engine lacks go into the load archive. The deploy that runs
//! the image comes after; this never starts or stops a container.

use gantry_core::Code;
use gantry_core::agent_api::{BlobList, ImageLoaded, ImageManifest};

use crate::agent::Agent;
use crate::container::image::assemble;
use crate::container::{ContainerError, Engine};
use crate::container_instance::engine;
use crate::error::AgentError;
use crate::upload;

/// `POST /v1/images/missing`.
pub(crate) async fn missing(agent: &Agent, image: &ImageManifest) -> Result<BlobList, AgentError> {
    checked(image)?;
    let engine = connected(agent).await?;
    if engine.has_image(&image.config).await.map_err(load_failed)? {
        return Ok(BlobList::default());
    }
    let needed = needed_blobs(engine, image).await?;
    Ok(upload::missing(&agent.blobs, &needed))
}

/// `POST /v1/images`: loads the image (only the layers the engine lacks)
/// from the uploaded blobs, then tags it; an image the engine has is tagged.
pub(crate) async fn load(agent: &Agent, image: &ImageManifest) -> Result<ImageLoaded, AgentError> {
    checked(image)?;
    let engine = connected(agent).await?;
    let mut layers_loaded = 0;
    if !engine.has_image(&image.config).await.map_err(load_failed)? {
        let present = engine.present_layers().await.map_err(load_failed)?;
        let needed = needed_blobs(engine, image).await?;
        let absent = agent.blobs.missing(&needed);
        if !absent.is_empty() {
            return Err(AgentError::conflict(
                Code::ArtifactIncomplete,
                format!(
                    "the host lacks {} blob(s) of image {}: {}",
                    absent.len(),
                    image.tags.join(", "),
                    absent.join(", ")
                ),
                "upload them (POST /v1/images/missing says which), then load again",
            ));
        }
        layers_loaded = image.missing_layers(&present).len();
        let scratch = tempfile::Builder::new()
            .prefix(".image-")
            .tempfile_in(agent.paths.root.as_path())
            .map_err(|e| io_failed("make the image's load archive", e))?;
        let blobs = agent.blobs.clone();
        let manifest = image.clone();
        let file = scratch
            .reopen()
            .map_err(|e| io_failed("open the image's load archive", e))?;
        tokio::task::spawn_blocking(move || {
            assemble(
                &manifest,
                &present,
                |digest| blobs.path(digest).unwrap_or_default(),
                std::io::BufWriter::new(file),
            )
        })
        .await
        .map_err(|e| io_failed("assemble the image", std::io::Error::other(e)))?
        .map_err(|e| load_failed(ContainerError::from(e)))?;
        engine.load(scratch.path()).await.map_err(load_failed)?;
        if !engine.has_image(&image.config).await.map_err(load_failed)? {
            return Err(load_failed(ContainerError::Archive(format!(
                "the engine loaded the archive but has no image sha256:{}",
                image.config
            ))));
        }
    }
    engine
        .tag(&image.config, &image.tags)
        .await
        .map_err(load_failed)?;
    tracing::info!(image = %image.config, tags = ?image.tags, layers_loaded, "image loaded");
    Ok(ImageLoaded {
        id: image.config.clone(),
        tags: image.tags.clone(),
        layers_loaded,
    })
}

/// The config and the layers the engine lacks, by digest.
async fn needed_blobs(engine: &Engine, image: &ImageManifest) -> Result<Vec<String>, AgentError> {
    let present = engine.present_layers().await.map_err(load_failed)?;
    let mut needed: Vec<String> = std::iter::once(image.config.clone())
        .chain(
            image
                .missing_layers(&present)
                .into_iter()
                .map(|l| l.digest.clone()),
        )
        .collect();
    needed.dedup();
    Ok(needed)
}

fn checked(image: &ImageManifest) -> Result<(), AgentError> {
    image.check().map_err(|e| {
        AgentError::invalid(
            Code::RequestInvalid,
            e.to_string(),
            "send the manifest gantry made of the image",
        )
    })
}

async fn connected(agent: &Agent) -> Result<&Engine, AgentError> {
    engine(agent).await.map_err(|message| {
        AgentError::failed(
            Code::ImageLoadFailed,
            format!("no Docker Engine to load the image into: {message}"),
        )
    })
}

fn load_failed(error: ContainerError) -> AgentError {
    AgentError::failed(Code::ImageLoadFailed, error.to_string())
}

fn io_failed(action: &str, error: std::io::Error) -> AgentError {
    AgentError::failed(Code::IoFailed, format!("cannot {action}: {error}"))
}

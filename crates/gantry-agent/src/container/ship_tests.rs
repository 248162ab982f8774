//! Images travel without a registry, on the real Docker engine: an image
//! exported on the "user's side" is split into blobs; the "host" (the same
//! engine, after the images are removed from it, so it holds only their
//! base) receives into the agent's blob store only the layers its engine
//! lacks, assembles a `docker load` archive from them and loads it. A
//! second image that differs in one layer ships only that layer.
//! Needs root and Docker. (A unit test because the blob store is private.)

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::process::Command;

use crate::artifact::BlobStore;
use crate::container::Engine;
use crate::container::image::{self, ImageManifest};

fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Test images, removed on drop.
struct Images(Vec<String>);

impl Images {
    /// Builds `tag` from a Dockerfile (legacy builder; no registry).
    fn build(&mut self, tag: &str, dockerfile: &str) {
        let context = tempfile::tempdir().expect("context");
        std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        let context = context.path().display().to_string();
        let (ok, output) = docker(&["build", "-q", "-t", tag, &context]);
        assert!(ok, "docker build {tag}: {output}");
        self.0.push(tag.to_owned());
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for tag in self.0.iter().rev() {
            let _ = docker(&["image", "rm", "-f", tag]);
        }
    }
}

/// What one shipment sent: the blobs the host's store received, by size.
struct Shipped {
    layer_bytes: u64,
    layers: Vec<String>,
    config_sent: bool,
}

/// The host's side of shipping `manifest`: which layers its engine lacks,
/// which of those (and the config) its blob store lacks; those are sent
/// from the user's blob directory through the store's digest check; then
/// the load archive is assembled and loaded.
async fn ship(
    engine: &Engine,
    manifest: &ImageManifest,
    user_blobs: &Path,
    host: &BlobStore,
    scratch: &Path,
) -> Shipped {
    let present = engine.present_layers().await.expect("present layers");
    let needed: Vec<String> = std::iter::once(manifest.config.clone())
        .chain(
            manifest
                .missing_layers(&present)
                .into_iter()
                .map(|l| l.digest.clone()),
        )
        .collect();
    let mut shipped = Shipped {
        layer_bytes: 0,
        layers: Vec::new(),
        config_sent: false,
    };
    for digest in host.missing(needed.iter().map(String::as_str)) {
        let file = File::open(user_blobs.join(&digest)).expect("the user's blob");
        let size = file.metadata().expect("metadata").len();
        host.put(file, &digest).expect("the host stores the blob");
        if digest == manifest.config {
            shipped.config_sent = true;
        } else {
            shipped.layer_bytes += size;
            shipped.layers.push(digest);
        }
    }
    let archive = scratch.join(format!("{}.tar", manifest.config));
    let written = image::assemble(
        manifest,
        &present,
        |digest| host.path(digest).expect("a valid digest"),
        File::create(&archive).expect("create the load archive"),
    )
    .expect("assemble");
    assert_eq!(
        written,
        manifest
            .missing_layers(&present)
            .iter()
            .map(|l| l.size)
            .sum::<u64>()
    );
    engine.load(&archive).await.expect("docker load");
    shipped
}

#[tokio::test]
async fn a_second_image_differing_in_one_layer_ships_only_that_layer() {
    let base = gantry_testkit::images::base();
    let pid = std::process::id();
    let v1 = format!("gantry-test-ship-{pid}:v1");
    let v2 = format!("gantry-test-ship-{pid}:v2");
    let mut images = Images(Vec::new());
    // Random bytes: layers no other image (or earlier run) has.
    images.build(
        &v1,
        &format!("FROM {base}\nRUN head -c 300000 /dev/urandom > /one\n"),
    );
    images.build(
        &v2,
        &format!("FROM {v1}\nRUN head -c 200000 /dev/urandom > /two\n"),
    );
    let scratch = tempfile::tempdir().expect("scratch");
    let user_blobs = scratch.path().join("user-blobs");
    let host = BlobStore::new(scratch.path().join("host-blobs"));
    let engine = Engine::for_test(scratch.path()).await;

    // The user's side: both images as blobs.
    let m1 = engine
        .export_image(&v1, &user_blobs, vec![v1.clone()])
        .await
        .expect("export v1");
    let m2 = engine
        .export_image(&v2, &user_blobs, vec![v2.clone()])
        .await
        .expect("export v2");
    assert_eq!(format!("sha256:{}", m2.config), image_id(&v2));
    assert_eq!(m2.layers.len(), m1.layers.len() + 1);
    assert_eq!(m2.layers[..m1.layers.len()], m1.layers[..]);

    // The host lacks both: only their base stays in the engine.
    for tag in [&v2, &v1] {
        let (ok, output) = docker(&["image", "rm", tag]);
        assert!(ok, "{output}");
    }
    let before = engine.present_layers().await.expect("present");
    assert!(!m1.missing_layers(&before).is_empty());

    let first = ship(&engine, &m1, &user_blobs, &host, scratch.path()).await;
    // The base's layers are on the host already: only v1's own layer goes.
    assert_eq!(
        first.layers,
        vec![m1.layers.last().expect("a layer").digest.clone()]
    );
    assert!(first.config_sent);
    assert_eq!(image_id(&v1), format!("sha256:{}", m1.config));

    let second = ship(&engine, &m2, &user_blobs, &host, scratch.path()).await;
    let top = m2.layers.last().expect("a layer");
    assert_eq!(second.layers, vec![top.digest.clone()]);
    assert_eq!(second.layer_bytes, top.size);
    let whole: u64 = m2.layers.iter().map(|l| l.size).sum();
    assert!(
        second.layer_bytes * 10 < whole,
        "{} of {whole} bytes shipped for a one-layer change",
        second.layer_bytes
    );
    assert_eq!(image_id(&v2), format!("sha256:{}", m2.config));
    let (ok, output) = docker(&["run", "--rm", &v2, "sh", "-c", "wc -c < /one; wc -c < /two"]);
    assert!(ok, "{output}");
    assert_eq!(
        output.split_whitespace().collect::<Vec<_>>(),
        ["300000", "200000"]
    );

    // Shipping again sends nothing: the engine has every layer.
    let again = ship(&engine, &m2, &user_blobs, &host, scratch.path()).await;
    assert!(again.layers.is_empty() && !again.config_sent);
    let present: HashSet<String> = engine.present_layers().await.expect("present");
    assert!(m2.missing_layers(&present).is_empty());
}

fn image_id(tag: &str) -> String {
    let (ok, output) = docker(&["image", "inspect", "--format", "{{.Id}}", tag]);
    assert!(ok, "{output}");
    output.trim().to_owned()
}

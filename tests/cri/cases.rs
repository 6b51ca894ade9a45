//! The cases: each takes a started [`Lab`] and speaks CRI to it.

use anyhow::{Result, ensure};
use k8s_cri::v1 as cri;

use crate::harness::{IMAGE, Lab, build_image};

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn status(lab: &mut Lab, image: &str) -> Result<Option<cri::Image>> {
    Ok(lab
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

pub async fn version_and_status(lab: &mut Lab) -> Result<()> {
    let version = lab
        .runtime
        .version(cri::VersionRequest::default())
        .await?
        .into_inner();
    ensure!(version.runtime_api_version == "v1", "{version:?}");
    ensure!(!version.runtime_name.is_empty(), "{version:?}");
    let status = lab
        .runtime
        .status(cri::StatusRequest::default())
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    let ready = |kind: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.r#type == kind && c.status)
    };
    ensure!(ready("RuntimeReady"), "{status:?}");
    ensure!(ready("NetworkReady"), "{status:?}");
    Ok(())
}

pub async fn image_list_and_status(lab: &mut Lab) -> Result<()> {
    let expected_digest = format!("docker.io/library/fkbusybox@{}", lab.image.manifest_digest);
    let listed = lab
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images;
    let image = listed
        .iter()
        .find(|i| i.id == lab.image.config_digest)
        .ok_or_else(|| anyhow::anyhow!("{} not listed: {listed:?}", lab.image.config_digest))?;
    ensure!(image.repo_tags == vec![IMAGE.to_string()], "{image:?}");
    // containerd lists no repo digest for a `ctr images import`ed image (it has only a
    // tag); ours records `repo@manifest digest`, as for a pulled image. Either is CRI.
    ensure!(
        image.repo_digests.iter().all(|d| *d == expected_digest),
        "{image:?}"
    );
    let by_digest = !image.repo_digests.is_empty();
    ensure!(image.size > 0, "{image:?}");
    // Lookups by short name (normalised), full name, ID and repo digest all agree.
    let config = lab.image.config_digest.clone();
    let mut names = vec!["fkbusybox", "fkbusybox:latest", IMAGE, config.as_str()];
    if by_digest {
        names.push(expected_digest.as_str());
    }
    for name in names {
        let found = status(lab, name).await?;
        ensure!(
            found.as_ref().map(|i| i.id.as_str()) == Some(config.as_str()),
            "ImageStatus({name}) = {found:?}"
        );
    }
    // A filter narrows the list.
    let filtered = lab
        .images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("fkbusybox"),
            }),
        })
        .await?
        .into_inner()
        .images;
    ensure!(
        filtered.len() == 1 && filtered[0].id == config,
        "{filtered:?}"
    );
    Ok(())
}

pub async fn image_status_of_missing_image_is_empty(lab: &mut Lab) -> Result<()> {
    ensure!(status(lab, "nosuchimage:1").await?.is_none());
    ensure!(
        status(lab, "docker.io/library/fkbusybox:other")
            .await?
            .is_none()
    );
    Ok(())
}

pub async fn image_remove_is_idempotent(lab: &mut Lab) -> Result<()> {
    let name = "ferrokube.invalid/removable:v1";
    let extra = build_image(lab.dir.path(), name, "removable")?;
    lab.import(&extra.archive)?;
    let found = status(lab, name).await?;
    ensure!(
        found.as_ref().map(|i| i.id.clone()) == Some(extra.config_digest.clone()),
        "{found:?}"
    );
    for _ in 0..2 {
        lab.images
            .remove_image(cri::RemoveImageRequest { image: spec(name) })
            .await?;
        ensure!(
            status(lab, name).await?.is_none(),
            "still there after remove"
        );
    }
    // The other image is untouched.
    ensure!(status(lab, IMAGE).await?.is_some());
    Ok(())
}

pub async fn image_fs_info(lab: &mut Lab) -> Result<()> {
    let info = lab
        .images
        .image_fs_info(cri::ImageFsInfoRequest::default())
        .await?
        .into_inner();
    let fs = info
        .image_filesystems
        .first()
        .ok_or_else(|| anyhow::anyhow!("no image filesystem: {info:?}"))?;
    ensure!(
        fs.fs_id
            .as_ref()
            .is_some_and(|id| !id.mountpoint.is_empty()),
        "{fs:?}"
    );
    // containerd samples usage every 10 s (0 until then): only presence is CRI.
    ensure!(fs.used_bytes.is_some(), "{fs:?}");
    Ok(())
}

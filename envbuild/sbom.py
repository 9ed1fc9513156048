"""A CycloneDX 1.6 JSON SBOM of an env, through cyclonedx-python-lib (`envbuild[sbom]`):
the env as the described component (its manifest digest a property), every distribution
with its purl `pkg:pypi/NAME@VERSION` and artifact hash, and the interpreter."""

from __future__ import annotations

import uuid

from . import __version__
from .errors import InputError
from .manifest import Manifest


def cyclonedx(manifest: Manifest, digest: str) -> str:
    try:
        from cyclonedx.model import HashAlgorithm, HashType, Property
        from cyclonedx.model.bom import Bom
        from cyclonedx.model.component import Component, ComponentType
        from cyclonedx.output.json import JsonV1Dot6
        from packageurl import PackageURL
    except ImportError:
        raise InputError("--format cyclonedx: expected cyclonedx-python-lib, found it not "
                         "installed; pip install 'envbuild[sbom]'") from None

    def sha256(value: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=value.removeprefix("sha256:"))]

    interp = manifest.interpreter
    python = Component(
        type=ComponentType.PLATFORM, name=interp.implementation, version=interp.version,
        bom_ref=f"interpreter:{interp.sha256}", hashes=sha256(interp.sha256),
        properties=[Property(name=f"envbuild:interpreter:{k}", value=v) for k, v in
                    (("path", interp.path), ("abi", interp.abi), ("platform", interp.platform),
                     ("libc", interp.libc))])
    dists = [Component(type=ComponentType.LIBRARY, name=d.name, version=d.version,
                       purl=PackageURL("pypi", name=d.name, version=d.version),
                       bom_ref=f"pkg:pypi/{d.name}@{d.version}", hashes=sha256(d.sha256),
                       properties=[Property(name="envbuild:artifact", value=d.artifact)])
             for d in sorted(manifest.distributions, key=lambda d: d.name)]
    env = Component(type=ComponentType.APPLICATION, name=manifest.name, bom_ref=digest,
                    version=digest, properties=[
                        Property(name="envbuild:manifest_digest", value=digest),
                        Property(name="envbuild:env_key", value=manifest.env_key),
                        Property(name="envbuild:tree_digest", value=manifest.tree_digest)])
    bom = Bom(components=[python, *dists],
              serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"envbuild:{digest}"),
              properties=[Property(name="envbuild:manifest_digest", value=digest)])
    bom.metadata.component = env
    bom.metadata.properties.add(Property(name="envbuild:version", value=__version__))
    bom.register_dependency(env, [python, *dists])
    return str(JsonV1Dot6(bom).output_as_string(indent=2)) + "\n"

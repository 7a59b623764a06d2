"""Value objects shared by many events."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Value(BaseModel):
    """Base of value objects inside events: frozen, unknown fields forbidden."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class BlobRef(Value):
    """Binary content by reference (claim check): the bytes live in the blob store."""

    uri: str = Field(min_length=1, description="Where the blob store keeps the bytes.")
    media_type: str = Field(min_length=3, examples=["image/png", "audio/wav"])
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    filename: str | None = None


class Usage(Value):
    """What one provider call consumed, in the units its price is quoted in."""

    input_tokens: int = 0
    output_tokens: int = 0
    characters: int = 0
    images: int = 0
    image_size: str | None = Field(
        default=None, examples=["1024x1024", "1792x1024"],
        description="The size of the images generated (their price depends on it).",
    )
    image_quality: str | None = Field(
        default=None, examples=["standard", "hd"],
        description="The quality the images were generated at (their price depends on it).",
    )
    transactions: int = 0
    audio_seconds: float = 0.0


class ProviderInfo(Value):
    """Which provider produced a result: the family, and the model or deployment used."""

    name: str = Field(examples=["local", "azure", "fake"])
    model: str | None = None
    cached: bool = Field(
        default=False,
        description="The result came from the result cache: nothing was called or paid.",
    )
    saved: Usage | None = Field(
        default=None,
        description="On a cache hit: what the original call consumed, so what this answer "
        "saved (priced by the price table: the money saved).",
    )

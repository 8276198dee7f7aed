"""Makers' offer policies and their listings, as the policy file and validation see them."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class MakerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    maker_id: Identifier
    display_name: str | None = None
    min_offer_cents: int = Field(default=1, ge=1)
    #: Offers under this percentage of the asking price are rejected without bothering the maker.
    auto_reject_below_pct: Decimal = Field(default=Decimal(0), ge=0, le=100, decimal_places=2)
    accepts_bank_payments: bool = True
    #: Hours a maker has to answer a submitted offer before it is cancelled ``maker_sla_expired``.
    sla_hours: Decimal = Field(default=Decimal(48), gt=0, lt=100000, decimal_places=3)


class Listing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listing_id: Identifier
    maker_id: Identifier
    title: str | None = None
    asking_price_cents: int = Field(gt=0)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    status: Literal["active", "paused", "sold", "withdrawn"] = "active"


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    makers: list[MakerPolicy] = []
    listings: list[Listing] = []


class ListingPolicy(BaseModel):
    """What validation needs to know about one listing: the listing and its maker's policy."""

    listing: Listing
    maker: MakerPolicy


class PolicyFileError(Exception):
    """The policy file cannot be used; the message names the file and the first bad entry."""

-- Each draft offers.validate_draft checked against its listing's policy: the product funnel's
-- first step, which nothing else records (stats shows it beside what Segment got). Ids and the
-- answer only, never the draft's body.
CREATE TABLE draft_validations (
    id            bigserial   PRIMARY KEY,
    validated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    offer_id      text        NOT NULL,
    listing_id    text        NOT NULL,
    maker_id      text        NOT NULL,
    valid         boolean     NOT NULL,
    synthetic     boolean     NOT NULL DEFAULT false
);
CREATE INDEX draft_validations_at_idx ON draft_validations (validated_at);

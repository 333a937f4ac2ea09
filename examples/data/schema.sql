-- Tables and the database function the examples use. Idempotent: safe to apply to a database more than once.
-- In the services' real database the instruments table and bulk_upsert_instruments(jsonb[]) already exist.

CREATE TABLE IF NOT EXISTS instruments (
    exchange   text NOT NULL,
    symbol     text NOT NULL,
    tick_size  numeric,
    meta       jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol)
);

CREATE OR REPLACE FUNCTION bulk_upsert_instruments(items jsonb[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE item jsonb;
BEGIN
    FOREACH item IN ARRAY items LOOP
        INSERT INTO instruments (exchange, symbol, tick_size, meta)
        VALUES (item->>'exchange', item->>'symbol', (item->>'tick_size')::numeric, item->'meta')
        ON CONFLICT (exchange, symbol) DO UPDATE
            SET tick_size = EXCLUDED.tick_size, meta = EXCLUDED.meta, updated_at = now();
    END LOOP;
END $$;

-- One-minute (or --bucket-seconds) candles written by examples/market_data_daemon.py, one row per symbol and bucket.
-- last_ms/last_seq: the stream ID of the last tick folded in, so a replayed tick is never counted twice.
CREATE TABLE IF NOT EXISTS candles (
    symbol   text        NOT NULL,
    bucket   timestamptz NOT NULL,
    open     numeric     NOT NULL,
    high     numeric     NOT NULL,
    low      numeric     NOT NULL,
    close    numeric     NOT NULL,
    volume   numeric     NOT NULL,
    trades   integer     NOT NULL,
    last_ms  bigint      NOT NULL,
    last_seq bigint      NOT NULL,
    PRIMARY KEY (symbol, bucket)
);

-- Request logs keep the query parameters and the body as the JSON text the service wrote, not
-- as jsonb: jsonb rewrites numbers (1.7976931348623157e308 comes back as a 309-digit integer
-- that a JSON reader may refuse), so a row could be stored that no page could read back. Text
-- is returned exactly as written, and the reader falls back to a string for anything else.
ALTER TABLE ops.request_logs
    ALTER COLUMN query_params TYPE text USING query_params::text,
    ALTER COLUMN data TYPE text USING data::text;

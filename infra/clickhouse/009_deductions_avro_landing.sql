-- The sink hands deductions to ClickHouse as Avro (an object container of the records' bodies, as
-- the workers wrote them) and ClickHouse decodes them itself: its compiled Avro reader runs at
-- several hundred thousand records a second, where decoding and building rows in Python capped the
-- sink below a direct insert. deductions_avro_in has the fields of schemas/deduction.v3.avsc (the
-- sink re-encodes older versions to it first) and stores nothing (Null engine). The view below maps
-- each deductions column by name from the Avro fields and runs in the same INSERT, so a value that
-- does not convert fails the insert and nothing lands.

CREATE TABLE IF NOT EXISTS deductions_avro_in
(
    deduction_id          String,
    event_id              String,
    trace_id              String,
    account_id            String,
    main_account_id       String,
    event_time            DateTime64(3, 'UTC'),
    profile               String,
    currency              String,
    price_version         String,
    item                  String,
    model                 Nullable(String),
    variant               Nullable(String),
    quantities            Map(String, String),
    lines                 Array(Tuple(component String, units String, unit_price String, amount String)),
    rated_amount          String,
    splits                Array(Tuple(bucket_kind String, bucket_id String, amount String, units String, unit String)),
    unbilled_amount       String,
    unbilled_reason       Nullable(String),
    billed_elsewhere      Bool,
    flags                 Array(String),
    balance_after         String,
    settlement_period     String,
    kind                  String,
    adjusts_deduction_id  Nullable(String),
    rerate_id             Nullable(String),
    settlement_id         Nullable(String)
)
ENGINE = Null;

-- Token counts are columns for token items only (other items keep their quantities in the map);
-- units sum the rating lines of non-token items. A split of a bucket kind the table has no column
-- for is a bug in the writer: throwIf fails the insert rather than leave its amount out.
CREATE MATERIALIZED VIEW IF NOT EXISTS deductions_avro_in_mv TO deductions AS
WITH
    item IN ('tokens', 'embedding', 'rerank') AS is_tokens,
    toDecimal128(0, 12) AS zero
SELECT
    deduction_id, event_id, trace_id, account_id, main_account_id, event_time, profile, currency, price_version, item,
    ifNull(model, '') AS model,
    ifNull(variant, '') AS variant,
    quantities,
    toUInt64(if(is_tokens AND mapContains(quantities, 'cache_hit'), quantities['cache_hit'], '0')) AS tokens_cache_hit,
    toUInt64(if(is_tokens AND mapContains(quantities, 'input'), quantities['input'], '0')) AS tokens_input,
    toUInt64(if(is_tokens AND mapContains(quantities, 'cache_write'), quantities['cache_write'], '0')) AS tokens_cache_write,
    toUInt64(if(is_tokens AND mapContains(quantities, 'output'), quantities['output'], '0')) AS tokens_output,
    toUInt64(if(is_tokens AND mapContains(quantities, 'reasoning'), quantities['reasoning'], '0')) AS tokens_reasoning,
    if(is_tokens, zero, arraySum(arrayMap(l -> toDecimal128(l.units, 12), lines))) AS units,
    toJSONString(lines) AS lines_json,
    toDecimal128(rated_amount, 12) AS rated_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'free', toDecimal128(s.amount, 12), zero), splits))
        + toDecimal128(throwIf(NOT arrayAll(s -> s.bucket_kind IN ('free', 'trial', 'pack', 'voucher', 'cash'), splits),
                               'deduction split with an unknown bucket kind'), 12) AS free_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'trial', toDecimal128(s.amount, 12), zero), splits)) AS trial_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'pack', toDecimal128(s.amount, 12), zero), splits)) AS pack_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'voucher', toDecimal128(s.amount, 12), zero), splits)) AS voucher_amount,
    arraySum(arrayMap(s -> if(s.bucket_kind = 'cash', toDecimal128(s.amount, 12), zero), splits)) AS cash_amount,
    toDecimal128(unbilled_amount, 12) AS unbilled_amount,
    ifNull(unbilled_reason, '') AS unbilled_reason,
    arrayMap(s -> s.bucket_kind, splits) AS split_bucket_kind,
    arrayMap(s -> s.bucket_id, splits) AS split_bucket_id,
    arrayMap(s -> toDecimal128(s.amount, 12), splits) AS split_amount,
    arrayMap(s -> toDecimal128(s.units, 12), splits) AS split_units,
    arrayMap(s -> s.unit, splits) AS split_unit,
    billed_elsewhere, flags,
    toDecimal128(balance_after, 12) AS balance_after,
    settlement_period, kind,
    ifNull(adjusts_deduction_id, '') AS adjusts_deduction_id,
    ifNull(rerate_id, '') AS rerate_id,
    ifNull(settlement_id, '') AS settlement_id
FROM deductions_avro_in;

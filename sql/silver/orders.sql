-- silver.orders: one row per valid order_id, typed, with region and category.
-- Columns starting with `_` are lineage: the expectations and the quarantine
-- table see them, silver.orders does not.
WITH stores AS (
    SELECT trim(store_id) AS store_id, max(trim(region)) AS region
    FROM bronze.stores
    GROUP BY trim(store_id)
),
products AS (
    SELECT trim(product_id) AS product_id, max(trim(category)) AS category
    FROM bronze.products
    GROUP BY trim(product_id)
),
-- Both order sources, with each one's timestamp format.
landed AS (
    SELECT order_id, customer_id, store_id, product_id, quantity, unit_price, status,
           order_ts, updated_at,
           try_to_timestamp(order_ts, '%Y-%m-%dT%H:%M:%S', '%Y-%m-%d %H:%M:%S') AS parsed_order_ts,
           try_to_timestamp(updated_at, '%Y-%m-%dT%H:%M:%S', '%Y-%m-%d %H:%M:%S') AS parsed_updated_at,
           _source_file, _source_line, _ingested_at
    FROM bronze.orders
    UNION ALL
    SELECT order_id, customer_id, store_id, product_id, quantity, unit_price, status,
           order_ts, updated_at,
           try_to_timestamp(order_ts, '%d/%m/%Y %H:%M') AS parsed_order_ts,
           try_to_timestamp(updated_at, '%d/%m/%Y %H:%M') AS parsed_updated_at,
           _source_file, _source_line, _ingested_at
    FROM bronze.branch_orders
),
typed AS (
    SELECT
        nullif(trim(o.order_id), '') AS order_id,
        o.parsed_order_ts AS order_ts,
        nullif(trim(o.customer_id), '') AS customer_id,
        nullif(trim(o.store_id), '') AS store_id,
        nullif(trim(o.product_id), '') AS product_id,
        CASE WHEN trim(o.quantity) ~ '^[+-]?[0-9]{1,9}$'
             THEN CAST(trim(o.quantity) AS INT) END AS quantity,
        CASE WHEN trim(o.unit_price) ~ '^-?[0-9]{1,10}(\.[0-9]+)?$'
             THEN CAST(trim(o.unit_price) AS DECIMAL(12, 2)) END AS unit_price,
        trim(o.status) AS status,
        o.parsed_updated_at AS updated_at,
        o.order_ts AS _raw_order_ts,
        o.quantity AS _raw_quantity,
        o.unit_price AS _raw_unit_price,
        o.updated_at AS _raw_updated_at,
        o._source_file,
        o._source_line,
        o._ingested_at
    FROM landed o
)
SELECT
    t.order_id,
    t.order_ts,
    CAST(t.order_ts AS DATE) AS order_date,
    t.customer_id,
    t.store_id,
    s.region,
    t.product_id,
    p.category,
    t.quantity,
    t.unit_price,
    CAST(CAST(t.quantity AS DECIMAL(10, 0)) * t.unit_price AS DECIMAL(14, 2)) AS amount,
    t.status,
    t.updated_at,
    s.store_id IS NOT NULL AS _store_known,
    t._raw_order_ts,
    t._raw_quantity,
    t._raw_unit_price,
    t._raw_updated_at,
    t._source_file,
    t._source_line,
    t._ingested_at
FROM typed t
LEFT JOIN stores s ON t.store_id = s.store_id
LEFT JOIN products p ON t.product_id = p.product_id

-- gold.daily_region_sales: one row per (order_date, region).
SELECT
    order_date,
    region,
    count(*) AS orders,
    coalesce(sum(CASE WHEN status = 'completed' THEN CAST(quantity AS BIGINT) END), 0) AS units,
    CAST(coalesce(sum(CASE WHEN status = 'completed' THEN amount END), 0) AS DECIMAL(18, 2)) AS revenue,
    count(*) FILTER (WHERE status = 'returned') AS returns,
    CAST(
        sum(CASE WHEN status = 'completed' THEN amount END)
        / nullif(count(*) FILTER (WHERE status = 'completed'), 0)
        AS DECIMAL(14, 2)
    ) AS avg_order_value
FROM silver.orders
GROUP BY order_date, region

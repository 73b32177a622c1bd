-- gold.category_daily: completed sales per (order_date, region, category).
-- category is NULL for products missing from products.csv.
SELECT
    order_date,
    region,
    category,
    CAST(sum(amount) AS DECIMAL(18, 2)) AS revenue,
    sum(CAST(quantity AS BIGINT)) AS units
FROM silver.orders
WHERE status = 'completed'
GROUP BY order_date, region, category

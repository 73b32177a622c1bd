SELECT
    l.login_date,
    l.device,
    count(*)                                  AS attempts,
    sum(CASE WHEN l.success THEN 1 ELSE 0 END) AS successful,
    count(DISTINCT l.user_id)                 AS users,
    count(DISTINCT CASE WHEN u.is_active THEN l.user_id END) AS active_users
FROM silver.logins l
JOIN silver.users u ON u.user_id = l.user_id
GROUP BY l.login_date, l.device

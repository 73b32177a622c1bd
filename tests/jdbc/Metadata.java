// What DBeaver, Metabase and Tableau ask through pgjdbc on connect and on
// browse, against a running `lakehouse serve`. Prints one `key=value` line per
// answer for tests/it/serve.rs to check; any exception fails the program.
//
// usage: java -cp postgresql.jar:. Metadata HOST PORT USER PASSWORD
import java.sql.*;

public class Metadata {
    static int count(ResultSet rs) throws SQLException {
        int n = 0;
        while (rs.next()) n++;
        rs.close();
        return n;
    }

    public static void main(String[] a) throws Exception {
        String url = "jdbc:postgresql://" + a[0] + ":" + a[1] + "/lakehouse";
        try (Connection c = DriverManager.getConnection(url, a[2], a[3])) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("product=" + md.getDatabaseProductName() + " " + md.getDatabaseMajorVersion());
            System.out.println("tables=" + count(md.getTables(null, "gold", "%", new String[] {"TABLE"})));
            try (ResultSet rs = md.getColumns(null, "gold", "daily_region_sales", "%")) {
                while (rs.next()) {
                    System.out.println("column=" + rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                }
            }
            System.out.println("primary_keys=" + count(md.getPrimaryKeys(null, "gold", "daily_region_sales")));
            System.out.println("indexes=" + count(md.getIndexInfo(null, "gold", "daily_region_sales", false, true)));
            System.out.println("imported_keys=" + count(md.getImportedKeys(null, "gold", "daily_region_sales")));
            System.out.println("exported_keys=" + count(md.getExportedKeys(null, "gold", "daily_region_sales")));
            System.out.println("type_info=" + (count(md.getTypeInfo()) > 10));
            System.out.println("functions=" + (count(md.getFunctions(null, "pg_catalog", "%")) >= 0));
            System.out.println("schemas=" + count(md.getSchemas()));
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT region, sum(revenue) FROM gold.daily_region_sales WHERE region = ? GROUP BY region")) {
                ps.setString(1, "east");
                try (ResultSet rs = ps.executeQuery()) {
                    ResultSetMetaData m = rs.getMetaData();
                    System.out.println("result_columns=" + m.getColumnLabel(1) + "," + m.getColumnLabel(2));
                    System.out.println("sum_type=" + m.getColumnTypeName(2) + "(" + m.getPrecision(2) + "," + m.getScale(2) + ")");
                    rs.next();
                    System.out.println("east_revenue=" + rs.getBigDecimal(2).toPlainString());
                }
            }
        }
    }
}

// Java's resolver as applications use it (InetAddress, through the JDK's name service): prints
// the first IPv4 address of the name.
import java.net.Inet4Address;
import java.net.InetAddress;

public class Lookup {
    public static void main(String[] args) throws Exception {
        for (InetAddress a : InetAddress.getAllByName(args[0])) {
            if (a instanceof Inet4Address) {
                System.out.println(a.getHostAddress());
                return;
            }
        }
        System.exit(2);
    }
}

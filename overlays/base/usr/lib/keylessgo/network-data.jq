# Written by keylessgo: OpenStack's network_data.json (from Ironic's config drive) as lines
# the shell reads without parsing JSON. `jq -r --arg target T -f network-data.jq FILE`:
#   target=initramfs  "mtu MAC N", "address MAC CIDR", "route MAC DEST/PREFIX GATEWAY",
#                     "dhcp MAC ipv4|ipv6", "dns ADDRESS", "skip TYPE ID"
#   target=networkd   "NAME LINE": LINE belongs to the file 10-keylessgo-config-drive-NAME.network
# Only values that match a strict pattern come out (the drive is data, not shell).
# Links are physical NICs matched by MAC; networks on bonds and VLANs come out as "skip".

def bits: . as $n | [range(0; 8) | select((($n / pow(2; .)) | floor) % 2 == 1)] | length;
def hexdigit: if . < 58 then . - 48 elif . >= 97 then . - 87 else . - 55 end;
def prefix4: split(".") | map(tonumber | bits) | add;
def prefix6: gsub(":"; "") | explode | map(hexdigit | bits) | add // 0;
def prefix($family): if test("^[0-9]+$") then tonumber elif $family == "ipv6" then prefix6 else prefix4 end;
def family: if startswith("ipv6") then "ipv6" else "ipv4" end;
def ipv4: test("^[0-9]{1,3}(\\.[0-9]{1,3}){3}$");
def ipv6: test("^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$");
def address: type == "string" and (sub("/[0-9]{1,3}$"; "") | (ipv4 or ipv6));
def cidr($family; $netmask):
  if test("/") then . else "\(.)/\(($netmask // (if $family == "ipv6" then "64" else "32" end)) | prefix($family))" end;
def validcidr: type == "string" and test("^[0-9A-Fa-f:.]+/[0-9]{1,3}$");
# "DEST/PREFIX GATEWAY" of one route of a network of family $f.
def route($f): select((.gateway | address) and (.network | address))
  | .gateway as $gw | .netmask as $m | .network | cidr($f; $m // "0") | select(validcidr) | "\(.) \($gw)";
def mac: ascii_downcase | select(test("^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"));

(.links // []) as $links
| [.networks[]? as $net
   | ($links | map(select(.id == $net.link)) | first) as $link
   | {net: $net, type: ($link.type // "phy"), id: ($link.id // $net.link),
      mac: (($link.ethernet_mac_address // "") | mac? // null), mtu: $link.mtu}
  ] as $networks
| ([.services[]?, .networks[]?.services[]? | select(.type == "dns") | .address | select(address)] | unique) as $dns
| [$networks[] | select(.type == "bond" or .type == "vlan" or .mac == null)] as $skipped
| [$networks[] | select(.type != "bond" and .type != "vlan" and .mac != null)] as $usable
| if $target == "initramfs" then
    ($skipped[] | "skip \(.type | gsub("[^a-z0-9_-]"; "")) \(.id | tostring | gsub("[^A-Za-z0-9_.-]"; ""))"),
    ($usable | unique_by(.mac)[] | select(.mtu | type == "number") | "mtu \(.mac) \(.mtu | floor)"),
    ($usable[] | .mac as $mac | .net
     | if (.type | test("dhcp|slaac")) then "dhcp \($mac) \(.type | family)"
       elif .type == "ipv4" or .type == "ipv6" then
         (.type as $f | .netmask as $m | .ip_address | select(address) | cidr($f; $m) | select(validcidr) | "address \($mac) \(.)"),
         (.type as $f | .routes[]? | route($f) | "route \($mac) \(.)")
       else empty end),
    ($dns[] | "dns \(.)")
  else
    ($usable | group_by(.mac)[] | (.[0].mac | gsub(":"; "")) as $name
     | (map(.net.type | select(test("dhcp|slaac")) | family) | unique) as $dhcp
     | "\($name) # Written by keylessgo-config-drive from the config drive's network_data.json.",
       "\($name) [Match]", "\($name) MACAddress=\(.[0].mac)",
       (.[0].mtu | select(type == "number") | "\($name) [Link]", "\($name) MTUBytes=\(floor)"),
       "\($name) [Network]",
       "\($name) DHCP=\(if ($dhcp | length) == 2 then "yes" elif ($dhcp | length) == 1 then $dhcp[0] else "no" end)",
       (if ($dhcp | index("ipv6")) then empty else "\($name) IPv6AcceptRA=no" end),
       (.[] | .net | select(.type == "ipv4" or .type == "ipv6") | .type as $f | .netmask as $m
        | .ip_address | select(address) | cidr($f; $m) | select(validcidr) | "\($name) Address=\(.)"),
       ($dns[] | "\($name) DNS=\(.)"),
       (.[] | .net | select(.type == "ipv4" or .type == "ipv6") | .type as $f | .routes[]? | route($f) | split(" ")
        | "\($name) [Route]", "\($name) Destination=\(.[0])", "\($name) Gateway=\(.[1])"))
  end

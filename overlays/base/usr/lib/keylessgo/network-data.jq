# Written by keylessgo: OpenStack's network_data.json (from Ironic's config drive) as lines
# the shell reads without parsing JSON. `jq -r --arg target T -f network-data.jq FILE`:
#   target=initramfs  in this order: "skip WHY" (a link or network dropped),
#                     "bond NAME MODE MIIMON HASHPOLICY|-", "member BOND MAC",
#                     "vlan NAME PARENT ID MAC|-", "mtu REF N", "address REF CIDR",
#                     "route REF DEST/PREFIX GATEWAY", "dhcp REF ipv4|ipv6", "dns ADDRESS";
#                     REF is a NIC's MAC or the name of a bond or VLAN this program made up.
#   target=networkd   "FILE LINE": LINE belongs to 10-keylessgo-config-drive-FILE (.network or
#                     .netdev); "! WHY": a link or network dropped.
# Only values that match a strict pattern come out (the drive is data, not shell).
# NICs are matched by MAC; bonds are named bond0, bond1... in the order of links[], VLANs
# vlanID (both short of the 15-character limit and the same in the initramfs and the booted
# system); a link with any invalid value is dropped, and so is everything built on it.

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
# An integer in $lo..$hi (drives write some as strings), or nothing.
def integer($lo; $hi): (if type == "string" and test("^[0-9]{1,9}$") then tonumber else . end)
  | select(type == "number" and . == floor and . >= $lo and . <= $hi);
def linkmtu: (.mtu | integer(68; 65535)) // null;
def safeid: tostring | gsub("[^A-Za-z0-9_.-]"; "") | .[:64];
def written: "# Written by keylessgo-config-drive from the config drive's network_data.json.";
def bondmodes: ["balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb"];
def hashpolicies: ["layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4", "vlan+srcmac"];

(.links // []) as $links
| [$links[] | select(.type != "bond" and .type != "vlan")
   | {id, kind: "phy", mtu: linkmtu, mac: (((.ethernet_mac_address // "") | mac?) // null)}
   | if .mac == null then .error = "no valid ethernet_mac_address" else .ref = .mac | .name = (.mac | gsub(":"; "")) end
  ] as $phys
| [$phys[] | select(.error == null)] as $goodphys
| ([$links[] | select(.type == "bond")] | to_entries | reduce .[] as {key: $i, value: $l} ([];
    . as $earlier
    | ($l.bond_links | if type == "array" then . else [] end) as $ids
    | {id: $l.id, kind: "bond", name: "bond\($i)", ref: "bond\($i)", mtu: ($l | linkmtu),
       mode: $l.bond_mode, miimon: ((($l.bond_miimon // 100) | integer(0; 1000000)) // null),
       hash: $l.bond_xmit_hash_policy, members: [$ids[] as $m | $goodphys[] | select(.id == $m) | .mac] | unique}
    | .error = (if (.mode | IN(bondmodes[]) | not) then "bond_mode not one of \(bondmodes | join(" "))"
        elif .miimon == null then "bond_miimon not an integer 0..1000000"
        elif .hash != null and (.hash | IN(hashpolicies[]) | not) then "bond_xmit_hash_policy not one of \(hashpolicies | join(" "))"
        elif ($ids | length) == 0 or (.members | length) != ($ids | length) then "bond_links not distinct ids of usable NICs"
        elif any(.members[]; IN($earlier[] | select(.error == null) | .members[])) then "bond_links share a NIC with an earlier bond"
        else null end)
    | $earlier + [.])) as $bonds
| ($goodphys + [$bonds[] | select(.error == null)]) as $parents
| (reduce ($links[] | select(.type == "vlan")) as $l ([];
    . as $earlier
    | {id: $l.id, kind: "vlan", mtu: ($l | linkmtu), vid: (($l.vlan_id | integer(1; 4094)) // null),
       parent: ([$parents[] | select(.id == $l.vlan_link)] | first),
       mac: (if $l.vlan_mac_address == null then null else ($l.vlan_mac_address | mac?) // "invalid" end)}
    | .name = "vlan\(.vid)" | .ref = .name
    | .error = (if .vid == null then "vlan_id not an integer 1..4094"
        elif .parent == null then "vlan_link not the id of a usable NIC or bond"
        elif .mac == "invalid" then "vlan_mac_address not a MAC address"
        elif (.vid as $vid | any($earlier[]; .error == null and .vid == $vid)) then "vlan_id used by an earlier vlan link"
        else null end)
    | $earlier + [.])) as $vlans
| [($phys + $bonds + $vlans)[] | select(.error == null)] as $good
| [$bonds[] | select(.error == null) | .members[]] as $members
| [.networks[]? as $net
   | ([$good[] | select(.id == $net.link)] | first) as $link
   | {net: $net, link: $link,
      error: (if $link == null then "its link \($net.link | safeid) is unknown or dropped"
        elif $link.kind == "phy" and ($link.mac | IN($members[])) then "its link \($net.link | safeid) is a bond member"
        else null end)}
  ] as $networks
| [$networks[] | select(.error == null)] as $usable
| [$vlans[] | select(.error == null) | .parent.ref] as $vlanparents
| [$good[] | select(.kind != "phy" or (.ref | IN($usable[].link.ref, $members[], $vlanparents[])))] as $used
| ([.services[]?, .networks[]?.services[]? | select(.type == "dns") | .address | select(address)] | unique) as $dns
| [(($phys + $bonds + $vlans)[] | select(.error != null) | "\(.kind) link \(.id | safeid) dropped: \(.error)"),
   ($networks[] | select(.error != null) | "network \(.net.id | safeid) dropped: \(.error)")] as $dropped
| if $target == "initramfs" then
    ($dropped[] | "skip \(.)"),
    ($used[] | select(.kind == "bond") | "bond \(.name) \(.mode) \(.miimon) \(.hash // "-")", (.name as $b | .members[] | "member \($b) \(.)")),
    ($used[] | select(.kind == "vlan") | "vlan \(.name) \(.parent.ref) \(.vid) \(.mac // "-")"),
    ($used[] | select(.mtu != null and (.ref | IN($members[]) | not)) | "mtu \(.ref) \(.mtu)"),
    ($usable[] | .link.ref as $ref | .net
     | if (.type | test("dhcp|slaac")) then "dhcp \($ref) \(.type | family)"
       elif .type == "ipv4" or .type == "ipv6" then
         (.type as $f | .netmask as $m | .ip_address | select(address) | cidr($f; $m) | select(validcidr) | "address \($ref) \(.)"),
         (.type as $f | .routes[]? | route($f) | "route \($ref) \(.)")
       else empty end),
    ($dns[] | "dns \(.)")
  else
    ($dropped[] | "! \(.)"),
    ($used[] | . as $link | .name as $name | [$usable[] | select(.link.ref == $link.ref) | .net] as $nets
     | ($nets | map(.type | select(test("dhcp|slaac")) | family) | unique) as $dhcp
     | ([$bonds[] | select(.error == null and any(.members[]; . == $link.ref)) | .name] | first) as $bond
     | (if .kind == "bond" then
          "\($name).netdev \(written)", "\($name).netdev [NetDev]", "\($name).netdev Name=\($name)", "\($name).netdev Kind=bond",
          "\($name).netdev [Bond]", "\($name).netdev Mode=\(.mode)", "\($name).netdev MIIMonitorSec=\(.miimon)ms",
          (.hash | select(. != null) | "\($name).netdev TransmitHashPolicy=\(.)")
        elif .kind == "vlan" then
          "\($name).netdev \(written)", "\($name).netdev [NetDev]", "\($name).netdev Name=\($name)", "\($name).netdev Kind=vlan",
          (.mac | select(. != null) | "\($name).netdev MACAddress=\(.)"),
          "\($name).netdev [VLAN]", "\($name).netdev Id=\(.vid)"
        else empty end),
       "\($name).network \(written)",
       "\($name).network [Match]",
       # A bond or VLAN takes over its NIC's MAC, a bond member its bond's: NICs under them
       # are matched by their permanent address, which virtual links do not have.
       (if .kind != "phy" then "\($name).network Name=\($name)"
        elif $bond != null or (.ref | IN($vlanparents[])) then "\($name).network PermanentMACAddress=\(.mac)"
        else "\($name).network MACAddress=\(.mac)" end),
       (if $bond != null then "\($name).network [Network]", "\($name).network Bond=\($bond)"
        else
          (.mtu | select(. != null) | "\($name).network [Link]", "\($name).network MTUBytes=\(.)"),
          "\($name).network [Network]",
          "\($name).network DHCP=\(if ($dhcp | length) == 2 then "yes" elif ($dhcp | length) == 1 then $dhcp[0] else "no" end)",
          (if ($dhcp | index("ipv6")) then empty else "\($name).network IPv6AcceptRA=no" end),
          ($vlans[] | select(.error == null and .parent.ref == $link.ref) | "\($name).network VLAN=\(.name)"),
          ($nets[] | select(.type == "ipv4" or .type == "ipv6") | .type as $f | .netmask as $m
           | .ip_address | select(address) | cidr($f; $m) | select(validcidr) | "\($name).network Address=\(.)"),
          ($dns[] | "\($name).network DNS=\(.)"),
          ($nets[] | select(.type == "ipv4" or .type == "ipv6") | .type as $f | .routes[]? | route($f) | split(" ")
           | "\($name).network [Route]", "\($name).network Destination=\(.[0])", "\($name).network Gateway=\(.[1])")
        end))
  end

/* Prints the layout of the ethtool uapi structures ntuple encodes by hand. */
#include <stdio.h>
#include <stddef.h>
#include <linux/ethtool.h>

int main(void) {
	struct ethtool_rxnfc n;
	printf("rxnfc_size %zu\n", sizeof(struct ethtool_rxnfc));
	printf("off_flow_type %zu\n", offsetof(struct ethtool_rxnfc, flow_type));
	printf("off_data %zu\n", offsetof(struct ethtool_rxnfc, data));
	printf("off_fs %zu\n", offsetof(struct ethtool_rxnfc, fs));
	printf("off_rule_cnt %zu\n", offsetof(struct ethtool_rxnfc, rule_cnt));
	printf("off_rule_locs %zu\n", offsetof(struct ethtool_rxnfc, rule_locs));
	printf("fs_size %zu\n", sizeof(struct ethtool_rx_flow_spec));
	printf("fs_h_u %zu\n", offsetof(struct ethtool_rx_flow_spec, h_u));
	printf("fs_h_ext %zu\n", offsetof(struct ethtool_rx_flow_spec, h_ext));
	printf("fs_m_u %zu\n", offsetof(struct ethtool_rx_flow_spec, m_u));
	printf("fs_m_ext %zu\n", offsetof(struct ethtool_rx_flow_spec, m_ext));
	printf("fs_ring_cookie %zu\n", offsetof(struct ethtool_rx_flow_spec, ring_cookie));
	printf("fs_location %zu\n", offsetof(struct ethtool_rx_flow_spec, location));
	printf("ext_vlan_tci %zu\n", offsetof(struct ethtool_flow_ext, vlan_tci));
	printf("ether_dst %zu\n", offsetof(union ethtool_flow_union, ether_spec.h_dest));
	printf("ETHER_FLOW %d\n", ETHER_FLOW);
	printf("FLOW_EXT %u\n", (unsigned)FLOW_EXT);
	(void)n;
	return 0;
}

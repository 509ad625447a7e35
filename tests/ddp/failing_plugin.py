"""A GENLAB_PLUGINS module for tests: the "ae_fails_on_rank1" family is the "ae" family, except
that rank 1 raises at step 3 while rank 0 carries on into its next collective."""
from genlab.core.errors import GenlabError
from genlab.core.registry import register_family
from genlab.engine import distributed
from genlab.families.ae import Autoencoder


@register_family("ae_fails_on_rank1")
class AEFailsOnRank1(Autoencoder):
    def training_step(self, batch, ctx):
        if ctx.step == 3 and distributed.current()[0] == 1:
            raise GenlabError("rank 1 fails on purpose at step 3")
        return super().training_step(batch, ctx)

/**
 * Import mitoqp detections into the open image, or into every image of a project.
 *
 *   QuPath script -p project.qpproj -a /path/to/mitoqp/out -s import_mitoqp.groovy
 *
 * For each image, reads <slide name>.geojson from the folder given with -a
 * (the slide file's name without its extension, as `mitoqp run` writes it),
 * replaces earlier mitoqp detections (classes "Mitotic figure", and with a
 * subtype model "Mitotic figure (atypical)" and "Mitotic figure (normal)")
 * and adds the new ones.
 * Without -a, the folder of the image itself is used.
 */
import qupath.lib.objects.PathObject

def server = getCurrentServer()
def uri = server.getURIs().iterator().next()
def slide = new File(uri)
def stem = slide.getName().replaceFirst(/(?i)\.ome\.tiff?$/, '').replaceFirst(/\.[^.]+$/, '')
def folder = (args != null && args.length > 0) ? new File(args[0]) : slide.getParentFile()
def geojson = new File(folder, stem + '.geojson')
if (!geojson.exists()) {
    println "mitoqp: no ${geojson} for ${getProjectEntry()?.getImageName() ?: stem}, skipped"
    return
}
def isMitoqp = { PathObject p -> p.getPathClass()?.getName()?.startsWith('Mitotic figure') }
def old = getDetectionObjects().findAll(isMitoqp)
removeObjects(old, true)
importObjectsFromFile(geojson.getAbsolutePath())
def n = getDetectionObjects().count(isMitoqp)
def atypical = getDetectionObjects().count { PathObject p -> p.getPathClass()?.getName() == 'Mitotic figure (atypical)' }
println "mitoqp: ${n} mitotic figures (${atypical} atypical) imported from ${geojson}"
